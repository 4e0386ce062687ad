package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/cocoon-network/cocoon/node"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// Client talks to one node's local API. Its methods may be called concurrently.
type Client struct {
	// BaseURL is the API's root, e.g. "http://127.0.0.1:8080", without a
	// trailing slash.
	BaseURL string
	// Token is the bearer token sent with every request; empty sends none.
	Token string
	// HTTP sends the requests; nil: http.DefaultClient.
	HTTP *http.Client
}

// New returns a client of the API at base ("http://HOST:PORT") with token.
func New(base, token string) *Client {
	return &Client{BaseURL: strings.TrimSuffix(base, "/"), Token: token}
}

// FromDatadir returns a client of the node running on datadir, found through
// <datadir>/api.addr and <datadir>/api.token. It fails when no node runs there
// (no api.addr); it does not check that the node answers.
func FromDatadir(datadir string) (*Client, error) {
	b, err := os.ReadFile(filepath.Join(datadir, node.APIAddrFile))
	if err != nil {
		return nil, fmt.Errorf("no running node for %s (start one with `cocoon node --datadir %s`): %w", datadir, datadir, err)
	}
	tok, err := node.LoadToken(datadir)
	if err != nil {
		return nil, err
	}
	return New("http://"+strings.TrimSpace(string(b)), tok), nil
}

// maxJSONAnswer bounds a JSON answer of a typed call (an overview of a busy
// node is the largest).
const maxJSONAnswer = 16 << 20

// maxErrorBody bounds what is read of an error answer.
const maxErrorBody = 64 << 10

// Error is a non-2xx answer of the node's API.
type Error struct {
	StatusCode int
	Status     string // e.g. "502 Bad Gateway"
	// Message is the OpenAI error object's message, else the body's text.
	Message string
	// Type is the OpenAI error object's type ("" when the body had none).
	Type string
}

func (e *Error) Error() string { return e.Status + ": " + e.Message }

// errorOf reads a non-2xx answer into an *Error.
func errorOf(resp *http.Response) *Error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e := &Error{StatusCode: resp.StatusCode, Status: resp.Status, Message: strings.TrimSpace(string(b))}
	var body openaiapi.ErrorResponse
	if json.Unmarshal(b, &body) == nil && body.Error.Message != "" {
		e.Message, e.Type = body.Error.Message, body.Error.Type
	}
	return e
}

// Do sends a request to path ("/v1/completions") with the token and returns
// the node's answer whatever its status; the caller closes its body. A body is
// sent as JSON. It is for what the typed calls do not cover: requests passed on
// as given (batch lines), answers whose error status is the point (tests).
func (c *Client) Do(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, body)
	if err != nil {
		return nil, err
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		if errors.Is(ctx.Err(), context.Canceled) {
			return nil, err // the caller gave up: the node is not at fault
		}
		return nil, fmt.Errorf("node API at %s unreachable (is the node running?): %w", c.BaseURL, err)
	}
	return resp, nil
}

// getJSON decodes the answer of GET path into v.
func (c *Client) getJSON(ctx context.Context, path string, v any) error {
	resp, err := c.Do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %w", path, errorOf(resp))
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxJSONAnswer+1))
	if err != nil {
		return fmt.Errorf("GET %s: read the answer: %w", path, err)
	}
	if len(b) > maxJSONAnswer {
		return fmt.Errorf("GET %s: answer over %d bytes", path, maxJSONAnswer)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("GET %s: decode the answer: %w", path, err)
	}
	return nil
}
