package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// maxSSEEvent bounds one server-sent event read from the node's API.
const maxSSEEvent = 1 << 20

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
			c, err := newAPIClient(datadir)
			if err != nil {
				return err
			}
			if model == "" {
				models, err := c.models()
				if err != nil {
					return err
				}
				if len(models) == 0 {
					return fmt.Errorf("no model is offered on the network yet (see `cocoon models`; workers' ads arrive within 10 s)")
				}
				model = models[0].ID
			}
			req := openaiapi.ChatCompletionRequest{
				Model:         model,
				Messages:      []openaiapi.ChatMessage{{Role: "user", Content: openaiapi.Content(strings.Join(args, " "))}},
				MaxTokens:     &maxTokens,
				Temperature:   &temperature,
				Stream:        true,
				StreamOptions: &openaiapi.StreamOptions{IncludeUsage: true},
			}
			if cmd.Flags().Changed("seed") {
				req.Seed = &seed
			}
			return c.streamChat(cmd.OutOrStdout(), cmd.ErrOrStderr(), req)
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
			c, err := newAPIClient(mdatadir)
			if err != nil {
				return err
			}
			ms, err := c.models()
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

// models reads GET /v1/models, keeping cocoon's extra fields (prices, TEE, workers).
func (c *apiClient) models() ([]openaiapi.Model, error) {
	var raw struct {
		Data []map[string]any `json:"data"`
	}
	if err := c.get("/v1/models", &raw); err != nil {
		return nil, err
	}
	out := make([]openaiapi.Model, 0, len(raw.Data))
	for _, d := range raw.Data {
		m := openaiapi.Model{Extra: map[string]any{}}
		for k, v := range d {
			switch k {
			case "id":
				m.ID, _ = v.(string)
			case "object", "created", "owned_by":
			default:
				m.Extra[k] = v
			}
		}
		out = append(out, m)
	}
	return out, nil
}

// streamChat posts a streaming chat request and writes the text as it arrives,
// then one line saying who answered and what it cost.
func (c *apiClient) streamChat(out, info io.Writer, req openaiapi.ChatCompletionRequest) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	hreq, err := http.NewRequest(http.MethodPost, c.base+"/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		return err
	}
	hreq.Header.Set("Authorization", "Bearer "+c.token)
	hreq.Header.Set("Content-Type", "application/json")
	client := &http.Client{Timeout: 10 * time.Minute}
	resp, err := client.Do(hreq)
	if err != nil {
		return fmt.Errorf("node API at %s unreachable (is the node running?): %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var e openaiapi.ErrorResponse
		if json.Unmarshal(b, &e) == nil && e.Error.Message != "" {
			return fmt.Errorf("chat: %s: %s", resp.Status, e.Error.Message)
		}
		return fmt.Errorf("chat: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	events := openaiapi.NewEventReader(resp.Body, maxSSEEvent)
	var usage *openaiapi.Usage
	for {
		data, done, err := events.Next()
		if err != nil {
			return fmt.Errorf("chat: reading the answer: %w", err)
		}
		if done {
			break
		}
		var chunk openaiapi.ChatCompletionChunk
		if err := json.Unmarshal(data, &chunk); err != nil {
			var e openaiapi.ErrorResponse
			if json.Unmarshal(data, &e) == nil && e.Error.Message != "" {
				return fmt.Errorf("chat: the answer broke off: %s", e.Error.Message)
			}
			return fmt.Errorf("chat: malformed event %q: %w", data, err)
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
	who := resp.Header.Get("X-Cocoon-Worker")
	if tee := resp.Header.Get("X-Cocoon-TEE"); tee != "" {
		who += ", TEE " + tee
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
