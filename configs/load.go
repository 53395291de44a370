// Package configs holds the configuration of every tricopy command: one typed
// struct per command with its defaults and its validation, and the loader
// that fills such a struct from flags, TRICOPY_* environment variables, a
// YAML file and defaults, in that order of precedence.
//
// A configuration struct declares its keys with struct tags:
//
//	Data string `key:"data" meta:"DIR" help:"directory holding the volume"`
//	Fence string `key:"fence" oneof:"data,never" help:"..."`
//
// key is the flag name (--data), the key in the --config file (data:) and,
// upper-cased with dashes turned into underscores and TRICOPY_ in front, the
// environment variable (TRICOPY_DATA). meta names the value in --help; oneof
// lists the only accepted values. Embedded structs (Common) contribute their
// keys. Supported field types: string, bool, uint64, Size, time.Duration and
// []string (comma-separated in flags and environment, a list or a
// comma-separated string in the file).
//
// Bind registers the flags of a struct on a flag set, with the struct's
// current field values as defaults; Load fills the struct and calls its
// Validate. Every error about a configuration value is an *Error naming the
// key. Only this package and cmd see viper; domain packages receive plain
// fields.
package configs

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// EnvPrefix starts the name of every environment variable that sets a key.
const EnvPrefix = "TRICOPY_"

// ConfigKey is the key of the flag naming the YAML configuration file. It
// can be given as a flag or as TRICOPY_CONFIG, not inside a file.
const ConfigKey = "config"

// Sentinel errors wrapped by *Error.
var (
	// ErrUnknownKey means a configuration file sets a key the command does not have.
	ErrUnknownKey = errors.New("unknown key")
	// ErrRequired means a key that has no default was not set.
	ErrRequired = errors.New("required")
	// ErrInvalid means a value has the wrong type or is outside its range.
	ErrInvalid = errors.New("invalid value")
)

// Error is a configuration error about one key. Source says where the
// offending value came from ("flag --size", "env TRICOPY_SIZE", "config file
// x.yaml"); it is empty when the error is about the combination of values
// rather than one of them.
type Error struct {
	// Key is the configuration key, which is also the flag name.
	Key string
	// Source is where the value came from; empty for errors about a
	// combination of values or a missing value.
	Source string
	// Err says what is wrong; it wraps ErrUnknownKey, ErrRequired,
	// ErrInvalid or ErrBadSize where one applies.
	Err error
}

// Error implements error.
func (e *Error) Error() string {
	if e.Source == "" {
		return fmt.Sprintf("config key %q: %v", e.Key, e.Err)
	}
	return fmt.Sprintf("config key %q (from %s): %v", e.Key, e.Source, e.Err)
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// MaxConfigFile is the largest --config file Load reads: the examples are
// a few KiB; a larger file is a mistake (a wrong path), not a config.
const MaxConfigFile = 1 << 20

// Config is implemented by every command configuration (a pointer to a
// struct with key tags).
type Config interface {
	// Validate checks the loaded values; an error about a key is an *Error.
	Validate() error
}

// EnvName returns the environment variable that sets key: "read-only" is
// TRICOPY_READ_ONLY.
func EnvName(key string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(key, "-", "_"))
}

// Required returns the error for a required key that was not set.
func Required(key string) *Error {
	return &Error{Key: key, Err: fmt.Errorf("%w: pass --%s, set %s, or set %s in the --config file",
		ErrRequired, key, EnvName(key), key)}
}

// Invalid returns an *Error wrapping ErrInvalid for key, with the message
// formatted from format and args.
func Invalid(key, format string, args ...any) *Error {
	return &Error{Key: key, Err: fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))}
}

// field is one key of a configuration struct.
type field struct {
	key   string
	help  string
	meta  string
	oneof []string
	value reflect.Value // addressable
}

var (
	sizeType     = reflect.TypeFor[Size]()
	durationType = reflect.TypeFor[time.Duration]()
)

// fields returns the keys of cfg, a pointer to a struct, in declaration
// order. A malformed struct is a programming error and panics.
func fields(cfg Config) []field {
	v := reflect.ValueOf(cfg)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		panic(fmt.Sprintf("configs: %T is not a pointer to a struct", cfg))
	}
	var out []field
	collectFields(v.Elem(), &out)
	seen := map[string]bool{}
	for _, f := range out {
		if seen[f.key] {
			panic(fmt.Sprintf("configs: %T declares key %q twice", cfg, f.key))
		}
		seen[f.key] = true
	}
	return out
}

func collectFields(v reflect.Value, out *[]field) {
	t := v.Type()
	for i := range t.NumField() {
		sf := t.Field(i)
		fv := v.Field(i)
		key, ok := sf.Tag.Lookup("key")
		if !ok {
			if sf.Anonymous && fv.Kind() == reflect.Struct {
				collectFields(fv, out)
			}
			continue
		}
		switch {
		case sf.Type == sizeType, sf.Type == durationType:
		case sf.Type.Kind() == reflect.String, sf.Type.Kind() == reflect.Bool, sf.Type.Kind() == reflect.Uint64:
		case sf.Type.Kind() == reflect.Slice && sf.Type.Elem().Kind() == reflect.String:
		default:
			panic(fmt.Sprintf("configs: key %q: unsupported type %s", key, sf.Type))
		}
		f := field{key: key, help: sf.Tag.Get("help"), meta: sf.Tag.Get("meta"), value: fv}
		if o := sf.Tag.Get("oneof"); o != "" {
			f.oneof = strings.Split(o, ",")
			if f.meta == "" {
				f.meta = strings.Join(f.oneof, "|")
			}
		}
		if f.meta == "" {
			f.meta = defaultMeta(sf.Type)
		}
		*out = append(*out, f)
	}
}

func defaultMeta(t reflect.Type) string {
	switch {
	case t == sizeType:
		return "SIZE"
	case t == durationType:
		return "DURATION"
	case t.Kind() == reflect.Uint64:
		return "N"
	case t.Kind() == reflect.Slice:
		return "LIST"
	}
	return "STRING"
}

// Keys returns the keys of cfg in declaration order.
func Keys(cfg Config) []string {
	var keys []string
	for _, f := range fields(cfg) {
		keys = append(keys, f.key)
	}
	return keys
}

// format returns the text form of a field's current value, as a flag
// default and as Load parses it back.
func (f field) format() string {
	v := f.value
	switch {
	case v.Type() == sizeType:
		if v.Uint() == 0 {
			return ""
		}
		return Size(v.Uint()).String()
	case v.Type() == durationType:
		if v.Int() == 0 {
			return ""
		}
		return time.Duration(v.Int()).String()
	case v.Kind() == reflect.Uint64:
		if v.Uint() == 0 {
			return ""
		}
		return strconv.FormatUint(v.Uint(), 10)
	case v.Kind() == reflect.Slice:
		return strings.Join(v.Interface().([]string), ",")
	case v.Kind() == reflect.Bool:
		return strconv.FormatBool(v.Bool())
	}
	return v.String()
}

// rawValue is the pflag.Value of every non-boolean key: it keeps the text as
// given so that flag, environment and file values are parsed by one decoder
// and their errors name the key the same way.
type rawValue struct {
	text string
	meta string
}

func (r *rawValue) String() string     { return r.text }
func (r *rawValue) Set(s string) error { r.text = s; return nil }
func (r *rawValue) Type() string       { return r.meta }

// Bind registers one flag per key of cfg on fs. The current field values of
// cfg are the defaults shown in --help and used when no source sets a key.
// Each flag's usage names its environment variable.
func Bind(fs *pflag.FlagSet, cfg Config) {
	for _, f := range fields(cfg) {
		usage := f.help + " [env " + EnvName(f.key) + "]"
		if f.value.Kind() == reflect.Bool {
			fs.Bool(f.key, f.value.Bool(), usage)
			continue
		}
		fs.Var(&rawValue{text: f.format(), meta: f.meta}, f.key, usage)
	}
}

// Load fills cfg from, in order of precedence, the flags of fs that were set
// on the command line, the TRICOPY_* environment variables, the YAML file
// named by --config (or TRICOPY_CONFIG), and the defaults registered by
// Bind; then it calls cfg.Validate. A key in the file that cfg does not
// have is an error. Every error is an *Error naming the key.
func Load(fs *pflag.FlagSet, cfg Config) error {
	fl := fields(cfg)
	v := viper.New()

	path, pathSource := "", ""
	if f := fs.Lookup(ConfigKey); f != nil && f.Changed {
		path, pathSource = f.Value.String(), "flag --"+ConfigKey
	} else if s := os.Getenv(EnvName(ConfigKey)); s != "" {
		path, pathSource = s, "env "+EnvName(ConfigKey)
	}
	fileSource := "config file " + path
	if pathSource != "flag --"+ConfigKey {
		fileSource += " named by " + EnvName(ConfigKey)
	}
	if path != "" {
		if st, err := os.Stat(path); err == nil && st.Size() > MaxConfigFile {
			return &Error{Key: ConfigKey, Source: pathSource, Err: fmt.Errorf("%w: config file %s is %d bytes, more than %d", ErrInvalid, path, st.Size(), MaxConfigFile)}
		}
		v.SetConfigFile(path)
		v.SetConfigType("yaml")
		if err := v.ReadInConfig(); err != nil {
			return &Error{Key: ConfigKey, Source: pathSource, Err: fmt.Errorf("read config file %s: %w", path, err)}
		}
		// Before any flag or environment binding, AllKeys lists exactly the
		// keys of the file.
		known := map[string]bool{}
		for _, f := range fl {
			known[f.key] = f.key != ConfigKey
		}
		keys := v.AllKeys()
		slices.Sort(keys)
		for _, k := range keys {
			if k == ConfigKey {
				return &Error{Key: k, Source: fileSource, Err: fmt.Errorf("%w: a config file cannot name another config file", ErrInvalid)}
			}
			if strings.Trim(k, ".") == "" || strings.HasPrefix(k, ".") {
				// An empty key ('': x, or one nested under it): the file is
				// at fault, and no key can be named.
				return &Error{Key: ConfigKey, Source: fileSource, Err: fmt.Errorf("%w: the file sets an empty key", ErrInvalid)}
			}
			if top, _, nested := strings.Cut(k, "."); nested && known[top] {
				return &Error{Key: top, Source: fileSource, Err: fmt.Errorf("%w: got a mapping, want a value", ErrInvalid)}
			}
			if !known[k] {
				var names []string
				for _, f := range fl {
					if f.key != ConfigKey {
						names = append(names, f.key)
					}
				}
				return &Error{Key: k, Source: fileSource, Err: fmt.Errorf("%w (this command knows: %s)", ErrUnknownKey, strings.Join(names, ", "))}
			}
		}
	}

	for _, f := range fl {
		if err := v.BindEnv(f.key, EnvName(f.key)); err != nil {
			return fmt.Errorf("bind env for key %s: %w", f.key, err)
		}
		if pf := fs.Lookup(f.key); pf != nil {
			if err := v.BindPFlag(f.key, pf); err != nil {
				return fmt.Errorf("bind flag for key %s: %w", f.key, err)
			}
		}
	}

	for _, f := range fl {
		source := "default"
		switch {
		case fs.Changed(f.key):
			source = "flag --" + f.key
		case os.Getenv(EnvName(f.key)) != "":
			source = "env " + EnvName(f.key)
		case path != "" && v.InConfig(f.key):
			source = fileSource
		}
		if err := f.decode(v.Get(f.key)); err != nil {
			return &Error{Key: f.key, Source: source, Err: err}
		}
	}
	if t, ok := cfg.(interface{ TLSConfig() *TLS }); ok {
		if err := t.TLSConfig().Validate(); err != nil {
			return err
		}
	}
	return cfg.Validate()
}

// decode stores raw, a value as viper returns it (a string from a flag or
// the environment, a YAML scalar or list from the file), into the field.
func (f field) decode(raw any) error {
	v := f.value
	switch {
	case v.Type() == sizeType:
		var s Size
		switch r := raw.(type) {
		case nil:
		case int:
			if r < 0 {
				return fmt.Errorf("%w: size %d is negative", ErrInvalid, r)
			}
			s = Size(r)
		case uint64:
			s = Size(r)
		case string:
			if strings.TrimSpace(r) != "" {
				var err error
				if s, err = ParseSize(r); err != nil {
					return err
				}
			}
		default:
			return wrongType(raw, "a size like 4096, 256MiB or 1GiB")
		}
		v.SetUint(uint64(s))
	case v.Type() == durationType:
		var d time.Duration
		switch r := raw.(type) {
		case nil:
		case int:
			if r != 0 {
				return fmt.Errorf("%w: duration %d has no unit: want a duration like 500ms or 5s", ErrInvalid, r)
			}
		case string:
			if strings.TrimSpace(r) != "" {
				var err error
				if d, err = time.ParseDuration(strings.TrimSpace(r)); err != nil {
					return fmt.Errorf("%w: want a duration like 500ms or 5s: %w", ErrInvalid, err)
				}
			}
		default:
			return wrongType(raw, "a duration like 500ms or 5s")
		}
		if d < 0 {
			return fmt.Errorf("%w: duration %s is negative", ErrInvalid, d)
		}
		v.SetInt(int64(d))
	case v.Kind() == reflect.Bool:
		switch r := raw.(type) {
		case nil:
		case bool:
			v.SetBool(r)
		case string:
			b, err := strconv.ParseBool(strings.TrimSpace(r))
			if err != nil {
				return fmt.Errorf("%w: %q is not a boolean (want true or false)", ErrInvalid, r)
			}
			v.SetBool(b)
		default:
			return wrongType(raw, "true or false")
		}
	case v.Kind() == reflect.Uint64:
		var n uint64
		switch r := raw.(type) {
		case nil:
		case int:
			if r < 0 {
				return fmt.Errorf("%w: %d is negative", ErrInvalid, r)
			}
			n = uint64(r)
		case uint64:
			n = r
		case string:
			if strings.TrimSpace(r) != "" {
				var err error
				if n, err = strconv.ParseUint(strings.TrimSpace(r), 10, 64); err != nil {
					return fmt.Errorf("%w: %q is not a non-negative integer", ErrInvalid, r)
				}
			}
		default:
			return wrongType(raw, "a non-negative integer")
		}
		v.SetUint(n)
	case v.Kind() == reflect.Slice:
		var list []string
		switch r := raw.(type) {
		case nil:
		case string:
			list = splitList(r)
		case []string:
			for _, s := range r {
				list = append(list, splitList(s)...)
			}
		case []any:
			for i, e := range r {
				s, ok := scalarString(e)
				if !ok {
					return fmt.Errorf("%w: element %d: %s", ErrInvalid, i, wrongType(e, "a string"))
				}
				list = append(list, splitList(s)...)
			}
		default:
			return wrongType(raw, "a list or a comma-separated string")
		}
		v.Set(reflect.ValueOf(list))
	default: // string
		s := ""
		if raw != nil {
			var ok bool
			if s, ok = scalarString(raw); !ok {
				return wrongType(raw, "a string")
			}
		}
		if f.oneof != nil {
			s = strings.ToLower(strings.TrimSpace(s))
			if !slices.Contains(f.oneof, s) {
				return fmt.Errorf("%w: %q (want one of %s)", ErrInvalid, s, strings.Join(f.oneof, ", "))
			}
		}
		v.SetString(s)
	}
	return nil
}

// scalarString returns the text of a YAML scalar.
func scalarString(v any) (string, bool) {
	switch v := v.(type) {
	case string:
		return v, true
	case int, int64, uint64, float64, bool:
		return fmt.Sprint(v), true
	}
	return "", false
}

// splitList splits a comma-separated list, dropping blanks.
func splitList(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

func wrongType(raw any, want string) error {
	kind := fmt.Sprintf("%T", raw)
	switch raw.(type) {
	case map[string]any:
		kind = "a mapping"
	case []any:
		kind = "a list"
	}
	return fmt.Errorf("%w: got %s, want %s", ErrInvalid, kind, want)
}
