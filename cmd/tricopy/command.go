package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/tricopy/tricopy/configs"
)

// configHelp ends the long help of every command.
const configHelp = `

Configuration: every flag can also be set as KEY in the YAML file named by
--config, where KEY is the flag's name (--read-only is "read-only: true"), or
as the environment variable TRICOPY_KEY, upper case with dashes turned into
underscores (TRICOPY_READ_ONLY=true); each flag's help names its variable.
Precedence: flag > environment variable > config file > default. Unknown keys
in the file and bad values are errors that name the key.

Exit codes: 0 success, 1 the operation or the check failed, 2 usage or
configuration error.`

// config is what a command configuration offers to newCommand: validation
// and the common keys (by embedding configs.Common).
type config interface {
	configs.Config
	CommonConfig() *configs.Common
}

// commandSpec is the help of a command.
type commandSpec struct {
	use     string // "format"
	short   string // one line, no final period
	long    string // paragraphs; the help shows short, long, then configHelp
	example string // indented command lines
}

// commandFunc runs a command with its loaded, validated configuration and
// a logger to standard error. Its error decides the exit code (exitCode).
type commandFunc[C config] func(ctx context.Context, a *app, log *slog.Logger, cfg C) error

// newCommand builds a subcommand whose flags are the keys of cfg (with the
// values of cfg as defaults): when it runs, it loads cfg from flags,
// environment and config file, builds the logger, and calls fn.
func newCommand[C config](a *app, spec commandSpec, cfg C, fn commandFunc[C]) *cobra.Command {
	c := &cobra.Command{
		Use:     spec.use,
		Short:   spec.short,
		Long:    spec.short + ".\n\n" + spec.long + configHelp,
		Example: spec.example,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageErrorf("unexpected argument %q: %s takes only flags", args[0], spec.use)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := configs.Load(cmd.Flags(), cfg); err != nil {
				return err
			}
			log := newLogger(cfg.CommonConfig(), a.stderr).With("cmd", cmd.Name())
			return fn(cmd.Context(), a, log, cfg)
		},
	}
	c.Flags().SortFlags = false // declaration order: required keys first
	configs.Bind(c.Flags(), cfg)
	c.SetUsageFunc(leafUsage)
	return c
}

// helpWidth is the width flag help is wrapped to.
const helpWidth = 100

// leafUsage prints the usage of a command without subcommands, with the
// flag help wrapped to helpWidth columns.
func leafUsage(c *cobra.Command) error {
	w := c.OutOrStderr()
	fmt.Fprintf(w, "Usage:\n  %s\n", c.UseLine())
	if c.HasExample() {
		fmt.Fprintf(w, "\nExamples:\n%s\n", c.Example)
	}
	fmt.Fprintf(w, "\nFlags:\n%s", c.LocalFlags().FlagUsagesWrapped(helpWidth))
	return nil
}

// newLogger returns the logger the common keys describe, writing to w.
func newLogger(c *configs.Common, w io.Writer) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		level = slog.LevelInfo // unreachable: log-level is validated when loading
	}
	opts := &slog.HandlerOptions{Level: level}
	format := c.LogFormat
	if format == "auto" {
		format = "json"
		if f, ok := w.(*os.File); ok && isTerminal(f) {
			format = "text"
		}
	}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
