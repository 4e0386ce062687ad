package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cocoon-network/cocoon/client/local"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

func init() {
	var (
		datadir, model string
		maxTokens      int
		temperature    float64
		seed           int64
	)
	chat := &cobra.Command{
		Use:   "chat [--model M] PROMPT",
		Short: "Ask the network through this node's gateway and stream the answer",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := local.FromDatadir(datadir)
			if err != nil {
				return err
			}
			if model == "" {
				ctx, cancel := context.WithTimeout(cmd.Context(), apiTimeout)
				models, err := c.Models(ctx)
				cancel()
				if err != nil {
					return err
				}
				if len(models) == 0 {
					return fmt.Errorf("no model is offered on the network yet (see `cocoon models`; workers' ads arrive within 10 s)")
				}
				model = models[0].ID
			}
			req := openaiapi.ChatCompletionRequest{
				Model:       model,
				Messages:    []openaiapi.ChatMessage{{Role: "user", Content: openaiapi.Content(strings.Join(args, " "))}},
				MaxTokens:   &maxTokens,
				Temperature: &temperature,
			}
			if cmd.Flags().Changed("seed") {
				req.Seed = &seed
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), chatTimeout)
			defer cancel()
			if err := streamChat(ctx, c, cmd.OutOrStdout(), cmd.ErrOrStderr(), req); err != nil {
				return fmt.Errorf("chat: %w", err)
			}
			return nil
		},
	}
	f := chat.Flags()
	f.StringVar(&datadir, "datadir", defaultDatadir(), "node data directory")
	f.StringVar(&model, "model", "", "model id (default: the first one `cocoon models` lists)")
	f.IntVar(&maxTokens, "max-tokens", 256, "most tokens to generate")
	f.Float64Var(&temperature, "temperature", 0.7, "sampling temperature (0: greedy)")
	f.Int64Var(&seed, "seed", 0, "sampling seed, for a reproducible answer")
	rootCmd.AddCommand(chat)

	var mdatadir string
	var mJSON bool
	models := &cobra.Command{
		Use:   "models",
		Short: "List the models on offer, with prices and TEE kinds",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := local.FromDatadir(mdatadir)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), apiTimeout)
			defer cancel()
			ms, err := c.Models(ctx)
			if err != nil {
				return err
			}
			if mJSON {
				return printJSON(cmd.OutOrStdout(), ms)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "MODEL\tDETAILS")
			for _, m := range ms {
				keys := make([]string, 0, len(m.Extra))
				for k := range m.Extra {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				var parts []string
				for _, k := range keys {
					b, _ := json.Marshal(m.Extra[k])
					parts = append(parts, k+"="+string(b))
				}
				fmt.Fprintf(tw, "%s\t%s\n", m.ID, strings.Join(parts, " "))
			}
			return tw.Flush()
		},
	}
	models.Flags().StringVar(&mdatadir, "datadir", defaultDatadir(), "node data directory")
	models.Flags().BoolVar(&mJSON, "json", false, "print JSON")
	rootCmd.AddCommand(models)
}

// chatTimeout bounds a whole streamed answer of `cocoon chat`.
const chatTimeout = 10 * time.Minute

// streamChat writes the answer to req as it arrives, then one line on info
// saying who answered and what it cost.
func streamChat(ctx context.Context, c *local.Client, out, info io.Writer, req openaiapi.ChatCompletionRequest) error {
	s, err := c.StreamChatCompletion(ctx, req)
	if err != nil {
		return err
	}
	defer s.Close()
	var usage *openaiapi.Usage
	for {
		chunk, err := s.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		for _, ch := range chunk.Choices {
			if ch.Delta.Content != nil {
				fmt.Fprint(out, *ch.Delta.Content)
			}
		}
		if chunk.Usage != nil {
			usage = chunk.Usage
		}
	}
	fmt.Fprintln(out)
	who := s.Worker
	if s.TEE != "" {
		who += ", TEE " + s.TEE
	}
	if usage != nil {
		cost := "free"
		if usage.CostNanoTON != nil {
			cost = fmt.Sprintf("%d nanoTON", *usage.CostNanoTON)
		}
		fmt.Fprintf(info, "[%s; %d prompt + %d completion tokens; %s]\n", who, usage.PromptTokens, usage.CompletionTokens, cost)
	}
	return nil
}
