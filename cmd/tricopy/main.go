// Command tricopy is the one binary of tricopy: it formats, checks and
// mounts volumes, runs the intermediate cluster and the local deployment
// (up), the secondaries at the far site, promotion and failback. See
// `tricopy --help` and the README.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/tricopy/tricopy/configs"
)

// Exit codes of the binary, part of the CLI contract.
const (
	exitOK     = 0 // success; fsck found the filesystem clean
	exitFailed = 1 // the operation or the check failed
	exitUsage  = 2 // usage or configuration error
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal, restore the default handling: a second
	// Ctrl-C kills the process even if a clean shutdown is stuck.
	go func() { <-ctx.Done(); stop() }()
	os.Exit(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run executes the command line args and returns the process exit code.
// Cancelling ctx (SIGINT, SIGTERM) asks a long-running command such as
// mount to shut down cleanly.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	root := newRootCmd(a)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	code := exitCode(err)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", cmd.CommandPath(), err)
		if code == exitUsage {
			fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
		}
	}
	return code
}

// exitCode maps the error of a command to the process exit code; it is the
// only place that does.
func exitCode(err error) int {
	var cfgErr *configs.Error
	var useErr *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &cfgErr), errors.As(err, &useErr):
		return exitUsage
	default:
		return exitFailed
	}
}

// usageError is a command-line error that is not about a configuration key:
// an unknown command or flag, or an unexpected argument.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

// app is what every command writes to.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
}

// newRootCmd builds the command tree.
func newRootCmd(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:   "tricopy",
		Short: "Replicated FUSE filesystem for disaster recovery across three sites",
		Long: `tricopy keeps a filesystem on a block volume of its own format, mounted with
FUSE, and mirrors every write synchronously to an intermediate Raft cluster
that gives the writes of all primaries one order and feeds live read-only
replicas at a far site, all at one crash-consistent point. When the primary
site is lost, promote turns the replicas into primaries; failback copies back
only what changed.

It formats, checks and mounts volumes (mirrored or local only), runs the
intermediate cluster, the secondaries, promote and failback, shows the status,
and runs benchmarks; up runs all of it locally.` + configHelp,
		Example: `  tricopy up --config configs/local.yaml --dir /tmp/tricopy-run
  tricopy format --data /var/lib/tricopy/a --size 1GiB
  tricopy mount --volume a --data /var/lib/tricopy/a --mountpoint /mnt/a
  tricopy fsck --data /var/lib/tricopy/a`,
		SilenceErrors: true,
		SilenceUsage:  true,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return nil
			}
			hint := ""
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				hint = "; did you mean " + strings.Join(s, " or ") + "?"
			}
			return usageErrorf("unknown command %q%s", args[0], hint)
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SetOut(a.stderr)
			if err := cmd.Usage(); err != nil {
				return err
			}
			return usageErrorf("a command is required")
		},
		CompletionOptions:          cobra.CompletionOptions{DisableDefaultCmd: true},
		SuggestionsMinimumDistance: 2,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &usageError{err}
	})
	// Adding a command: a config struct with key tags, its DefaultX and
	// Validate in package configs; a newXCmd built with newCommand in a
	// file of its own here; and a line below.
	root.AddCommand(
		newFormatCmd(a),
		newCertsCmd(a),
		newFsckCmd(a),
		newMountCmd(a),
		newUpCmd(a),
		newIntermediateCmd(a),
		newStatusCmd(a),
		newSecondaryCmd(a),
		newWaitCmd(a),
		newPromoteCmd(a),
		newFailbackCmd(a),
		newBenchCmd(a),
	)
	return root
}
