package local

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// Served says who answered a /v1 request, as the gateway's X-Cocoon-Worker
// (the worker's peer ID) and X-Cocoon-TEE (its TEE tier) headers name it.
type Served struct {
	Worker string
	TEE    string
}

func servedBy(h http.Header) Served {
	return Served{Worker: h.Get("X-Cocoon-Worker"), TEE: h.Get("X-Cocoon-TEE")}
}

// Models is GET /v1/models. Every field of an entry other than id, object,
// created and owned_by lands in Extra, as the node sent it: cocoon's additions
// ("workers", "tee", "price_nanoton_per_1m", "local") and the model's own
// ("digest", "context_length").
func (c *Client) Models(ctx context.Context) ([]openaiapi.Model, error) {
	var raw struct {
		Data []map[string]any `json:"data"`
	}
	if err := c.getJSON(ctx, "/v1/models", &raw); err != nil {
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

// Workers is how many workers the node's ad book holds for m (its "workers"
// field; 0 when absent, as for a model only the node itself serves).
func Workers(m openaiapi.Model) int {
	n, _ := m.Extra["workers"].(float64)
	return int(n)
}

// post sends v as JSON to path and returns the answer if it is 200.
func (c *Client) post(ctx context.Context, path string, v any) (*http.Response, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode the request: %w", err)
	}
	resp, err := c.Do(ctx, http.MethodPost, path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, errorOf(resp)
	}
	return resp, nil
}

// postJSON sends v as JSON to path and decodes the 200 answer into out.
func (c *Client) postJSON(ctx context.Context, path string, v, out any) (Served, error) {
	resp, err := c.post(ctx, path, v)
	if err != nil {
		return Served{}, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxJSONAnswer)).Decode(out); err != nil {
		return Served{}, fmt.Errorf("decode the answer: %w", err)
	}
	return servedBy(resp.Header), nil
}

// ChatCompletion is POST /v1/chat/completions, answered whole (req.Stream is
// cleared).
func (c *Client) ChatCompletion(ctx context.Context, req openaiapi.ChatCompletionRequest) (openaiapi.ChatCompletion, Served, error) {
	req.Stream, req.StreamOptions = false, nil
	var cc openaiapi.ChatCompletion
	by, err := c.postJSON(ctx, "/v1/chat/completions", req, &cc)
	return cc, by, err
}

// Completion is POST /v1/completions, answered whole (req.Stream is cleared).
func (c *Client) Completion(ctx context.Context, req openaiapi.CompletionRequest) (openaiapi.Completion, Served, error) {
	req.Stream, req.StreamOptions = false, nil
	var cc openaiapi.Completion
	by, err := c.postJSON(ctx, "/v1/completions", req, &cc)
	return cc, by, err
}

// StreamChatCompletion is POST /v1/chat/completions, streamed: req.Stream is
// set, and the usage chunk asked for.
func (c *Client) StreamChatCompletion(ctx context.Context, req openaiapi.ChatCompletionRequest) (*Stream[openaiapi.ChatCompletionChunk], error) {
	req.Stream, req.StreamOptions = true, &openaiapi.StreamOptions{IncludeUsage: true}
	resp, err := c.post(ctx, "/v1/chat/completions", req)
	if err != nil {
		return nil, err
	}
	return newStream[openaiapi.ChatCompletionChunk](resp), nil
}

// StreamCompletion is POST /v1/completions, streamed: req.Stream is set, and
// the usage event asked for.
func (c *Client) StreamCompletion(ctx context.Context, req openaiapi.CompletionRequest) (*Stream[openaiapi.Completion], error) {
	req.Stream, req.StreamOptions = true, &openaiapi.StreamOptions{IncludeUsage: true}
	resp, err := c.post(ctx, "/v1/completions", req)
	if err != nil {
		return nil, err
	}
	return newStream[openaiapi.Completion](resp), nil
}

// Stream is a streamed answer, read event by event by one goroutine. Close it
// when done; closing it early cancels the request.
type Stream[T any] struct {
	// Served names the worker answering, known from the start.
	Served
	body   io.ReadCloser
	events *openaiapi.EventReader
}

func newStream[T any](resp *http.Response) *Stream[T] {
	return &Stream[T]{Served: servedBy(resp.Header), body: resp.Body,
		events: openaiapi.NewEventReader(resp.Body, openaiapi.MaxEventBytes)}
}

// ErrBrokenOff is returned by Stream.Next for the error event a gateway sends
// when an answer under way fails; the error names the gateway's message.
var ErrBrokenOff = errors.New("the answer broke off")

// Next returns the next event, io.EOF after the stream's [DONE], and
// ErrBrokenOff (wrapped) for an error event.
func (s *Stream[T]) Next() (T, error) {
	var v T
	data, done, err := s.events.Next()
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF // the stream ended without [DONE]
	}
	if err != nil {
		return v, fmt.Errorf("read the answer: %w", err)
	}
	if done {
		return v, io.EOF
	}
	var e openaiapi.ErrorResponse
	if json.Unmarshal(data, &e) == nil && e.Error.Message != "" {
		return v, fmt.Errorf("%w: %s", ErrBrokenOff, e.Error.Message)
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return v, fmt.Errorf("malformed event %q: %w", data, err)
	}
	return v, nil
}

// Close ends the stream.
func (s *Stream[T]) Close() error { return s.body.Close() }
