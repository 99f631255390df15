package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/obdproject/obd/sandbox/sandboxapi"
	"github.com/spf13/cobra"
)

// lambdaFlags are the connection settings of every `obd sandbox` command.
type lambdaFlags struct {
	server    string
	tokenFile string
	caCert    string
	timeout   time.Duration
}

func (f *lambdaFlags) client(cmd *cobra.Command) (*sandboxapi.Client, context.Context, context.CancelFunc, error) {
	c := &sandboxapi.Client{Base: f.server, Token: os.Getenv("OBD_LAMBDA_TOKEN")}
	if f.tokenFile != "" {
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("--token-file: %w", err)
		}
		c.Token = strings.TrimSpace(string(b))
	}
	if f.caCert != "" {
		pem, err := os.ReadFile(f.caCert)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("--ca-cert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, nil, fmt.Errorf("--ca-cert %s: no PEM certificate", f.caCert)
		}
		c.HTTP = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
	return c, ctx, cancel, nil
}

func newSandboxCmd() *cobra.Command {
	f := &lambdaFlags{}
	cmd := &cobra.Command{
		Use:   "sandbox",
		Short: "Register and run functions on an obd-lambda server",
		Long: "sandbox talks to obd-lambda, which runs functions in lean sandboxes started from obd images\n" +
			"(cold, forked from a zygote, or thawed from the handler cache).",
	}
	cmd.PersistentFlags().StringVar(&f.server, "server", "unix:///run/obd/lambda.sock", "obd-lambda address: unix:///PATH or http(s)://HOST:PORT")
	cmd.PersistentFlags().StringVar(&f.caCert, "ca-cert", "", "PEM certificate(s) to trust for an https:// server (default: the system's)")
	cmd.PersistentFlags().StringVar(&f.tokenFile, "token-file", "", "file holding the server's bearer token (a server on TCP needs it; or $OBD_LAMBDA_TOKEN)")
	cmd.PersistentFlags().DurationVar(&f.timeout, "timeout", time.Minute, "time limit of the call to the server")
	cmd.AddCommand(newSandboxRegisterCmd(f), newSandboxRunCmd(f), newSandboxLsCmd(f), newSandboxStatsCmd(f), newSandboxRmCmd(f))
	return cmd
}

func newSandboxRegisterCmd(f *lambdaFlags) *cobra.Command {
	var (
		spec    sandboxapi.FunctionSpec
		code    string
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "register NAME --image REF --entry MODULE.FUNC --code DIR|FILE.tar[.gz]",
		Short: "Register a function",
		Long: "register adds a function. Its handler code is a local directory or tarball, uploaded. The\n" +
			"entry point is module.function, called with the decoded JSON event; its return value is the\n" +
			"JSON result.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec.Name = args[0]
			spec.TimeoutMS = timeout.Milliseconds()
			if code == "" {
				return fmt.Errorf("--code is required")
			}
			var upload io.Reader
			st, err := os.Stat(code)
			if err != nil {
				return err
			}
			if st.IsDir() {
				var buf bytes.Buffer
				if err := sandboxapi.ArchiveDir(code, &buf); err != nil {
					return err
				}
				upload = &buf
			} else {
				file, err := os.Open(code)
				if err != nil {
					return err
				}
				defer file.Close()
				upload = file
			}
			c, ctx, cancel, err := f.client(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			if err := c.Register(ctx, spec, upload); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "registered %s\n", spec.Name)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&spec.Image, "image", "", "runtime image ref (e.g. python3-bookworm)")
	fl.StringVar(&spec.Entry, "entry", "main.handler", "entry point module.function")
	fl.StringVar(&code, "code", "", "local handler directory or tarball to upload")
	fl.Int64Var(&spec.ScratchMB, "scratch", 64, "size of its /tmp in MB")
	fl.Int64Var(&spec.MemoryMB, "memory", 128, "memory limit in MB")
	fl.Float64Var(&spec.CPUs, "cpus", 1, "CPU quota in cores")
	fl.Int64Var(&spec.Pids, "pids", 32, "process limit")
	fl.DurationVar(&timeout, "handler-timeout", 10*time.Second, "per-invocation time limit; the sandbox is killed after it")
	fl.StringSliceVar(&spec.Imports, "imports", nil, "modules the function's own zygote imports")
	fl.StringSliceVar(&spec.Packages, "packages", nil, "install-cache packages put on the handler's sys.path")
	fl.StringVar(&spec.Policy, "policy", "", "keep-alive and pre-warm policy of its idle sandboxes, as obd sim names them (fixed-10m, hybrid, predictive, reuse+hybrid); default: the server's")
	fl.BoolVar(&spec.Checkpoint, "checkpoint", false, "restore starts: the server checkpoints an initialized sandbox once (modules and handler imported) and restores it where no zygote is warm (needs obd-lambda --checkpoints)")
	cmd.MarkFlagRequired("image")
	return cmd
}

func newSandboxRunCmd(f *lambdaFlags) *cobra.Command {
	var showPath bool
	cmd := &cobra.Command{
		Use:   "run NAME [JSON_EVENT | -]",
		Short: "Invoke a function and print its JSON result",
		Long:  "run invokes a function with a JSON event (an argument, or stdin with '-'; default null).",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			event := []byte("null")
			if len(args) == 2 {
				event = []byte(args[1])
				if args[1] == "-" {
					var err error
					if event, err = io.ReadAll(cmd.InOrStdin()); err != nil {
						return err
					}
				}
			}
			if !json.Valid(event) {
				return fmt.Errorf("event is not JSON: %.80s", event)
			}
			c, ctx, cancel, err := f.client(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			out, path, err := c.Run(ctx, args[0], event)
			if err != nil {
				return err
			}
			if showPath {
				fmt.Fprintf(cmd.ErrOrStderr(), "start path: %s\n", path)
			}
			fmt.Fprintln(cmd.OutOrStdout(), strings.TrimSpace(string(out)))
			return nil
		},
	}
	cmd.Flags().BoolVar(&showPath, "show-path", false, "print how the sandbox was started (cold, warm, hot) to stderr")
	return cmd
}

func newSandboxLsCmd(f *lambdaFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List registered functions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, ctx, cancel, err := f.client(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			specs, err := c.List(ctx)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tIMAGE\tENTRY\tMEMORY\tTIMEOUT")
			for _, s := range specs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%dMB\t%v\n", s.Name, s.Image, s.Entry, s.MemoryMB, time.Duration(s.TimeoutMS)*time.Millisecond)
			}
			return tw.Flush()
		},
	}
}

func newSandboxStatsCmd(f *lambdaFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "stats NAME",
		Short: "Show a function's counters as JSON",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := f.client(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			st, err := c.Stats(ctx, args[0])
			if err != nil {
				return err
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(st)
		},
	}
}

func newSandboxRmCmd(f *lambdaFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME...",
		Short: "Unregister functions (their sandboxes are destroyed)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := f.client(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			for _, name := range args {
				if err := c.Delete(ctx, name); err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
			}
			return nil
		},
	}
}
