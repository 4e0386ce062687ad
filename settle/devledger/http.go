package devledger

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/xssnick/tonutils-go/address"
	"github.com/xssnick/tonutils-go/tlb"
	"github.com/xssnick/tonutils-go/tvm/cell"

	"github.com/cocoon-network/cocoon/settle"
)

// The loopback service (JSON over HTTP, SIMULATED chain):
//
//	GET  /v1/info                  → {"name","global_id","now"}
//	GET  /v1/account?addr=ADDR     → {"status","balance","code","data","last_lt"} (code, data: base64 BOC)
//	POST /v1/send    body: BOC of an external inbound Message (≤ 64 KiB) → settle.Trace
//	POST /v1/faucet  {"addr","amount"} → settle.Trace   (simulated funds)
//	POST /v1/advance {"seconds"}       → {"now"}
//
// Errors: status 4xx/5xx with {"error", "refused"}; refused is true when the
// destination did not accept the external message.

const maxRequest = 64 << 10

type infoJSON struct {
	Name     string `json:"name"`
	GlobalID int32  `json:"global_id"`
	Now      uint32 `json:"now"`
}

type accountJSON struct {
	Status  string `json:"status"`
	Balance uint64 `json:"balance"`
	Code    []byte `json:"code,omitempty"`
	Data    []byte `json:"data,omitempty"`
	LastLT  uint64 `json:"last_lt"`
}

type errorJSON struct {
	Error   string `json:"error"`
	Refused bool   `json:"refused,omitempty"`
}

type faucetJSON struct {
	Addr   string `json:"addr"`
	Amount uint64 `json:"amount"`
}

type advanceJSON struct {
	Seconds int64 `json:"seconds"`
}

// Handler serves the ledger over HTTP. Bind it to a loopback address only.
func (d *Ledger) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/info", func(w http.ResponseWriter, r *http.Request) {
		now, _ := d.Now(r.Context())
		writeJSON(w, http.StatusOK, infoJSON{Name: Label, GlobalID: GlobalID, Now: now})
	})
	mux.HandleFunc("GET /v1/account", func(w http.ResponseWriter, r *http.Request) {
		addr, err := settle.ParseAddress(r.URL.Query().Get("addr"))
		if err != nil {
			writeJSON(w, http.StatusBadRequest, errorJSON{Error: err.Error()})
			return
		}
		st, _ := d.Account(r.Context(), addr)
		out := accountJSON{Status: st.Status, Balance: st.Balance, LastLT: st.LastLT}
		if st.Code != nil {
			out.Code = st.Code.ToBOC()
		}
		if st.Data != nil {
			out.Data = st.Data.ToBOC()
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("POST /v1/send", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequest))
		if err != nil {
			writeJSON(w, http.StatusRequestEntityTooLarge, errorJSON{Error: err.Error()})
			return
		}
		tr, err := d.SendExternalBOC(body)
		if err != nil {
			code := http.StatusBadRequest
			if errors.Is(err, settle.ErrRefused) {
				code = http.StatusConflict
			}
			writeJSON(w, code, errorJSON{Error: err.Error(), Refused: errors.Is(err, settle.ErrRefused)})
			return
		}
		writeJSON(w, http.StatusOK, tr)
	})
	mux.HandleFunc("POST /v1/faucet", func(w http.ResponseWriter, r *http.Request) {
		var req faucetJSON
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequest)).Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, errorJSON{Error: err.Error()})
			return
		}
		addr, err := settle.ParseAddress(req.Addr)
		if err != nil || req.Amount == 0 || req.Amount > 1<<62 {
			writeJSON(w, http.StatusBadRequest, errorJSON{Error: fmt.Sprintf("faucet: bad address or amount: %v", err)})
			return
		}
		tr, err := d.Faucet(addr, req.Amount)
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, errorJSON{Error: err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, tr)
	})
	mux.HandleFunc("POST /v1/advance", func(w http.ResponseWriter, r *http.Request) {
		var req advanceJSON
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequest)).Decode(&req); err != nil || req.Seconds < 0 {
			writeJSON(w, http.StatusBadRequest, errorJSON{Error: "advance: want non-negative seconds"})
			return
		}
		d.Advance(time.Duration(req.Seconds) * time.Second)
		now, _ := d.Now(r.Context())
		writeJSON(w, http.StatusOK, infoJSON{Name: Label, GlobalID: GlobalID, Now: now})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// NewServer is an http.Server for the ledger with timeouts set.
func (d *Ledger) NewServer() *http.Server {
	return &http.Server{
		Handler:           d.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
	}
}

// CheckLoopback refuses a listen address that is not on a loopback interface.
func CheckLoopback(listen string) error {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("devledger listen %q: %w", listen, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("devledger listen %q: only loopback addresses are allowed", listen)
	}
	return nil
}

// Client is a settle.Ledger over the loopback service.
type Client struct {
	base     string
	http     *http.Client
	globalID int32
}

// Dial checks the service at base (http://127.0.0.1:PORT) and returns a client.
func Dial(ctx context.Context, base string) (*Client, error) {
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("devledger url %q: want http://HOST:PORT", base)
	}
	c := &Client{base: strings.TrimRight(base, "/"), http: &http.Client{Timeout: 30 * time.Second}}
	var info infoJSON
	if err := c.do(ctx, http.MethodGet, "/v1/info", nil, &info); err != nil {
		return nil, fmt.Errorf("devledger at %s: %w", base, err)
	}
	if info.Name != Label {
		return nil, fmt.Errorf("devledger at %s: service says %q", base, info.Name)
	}
	c.globalID = info.GlobalID
	return c, nil
}

// Name implements settle.Ledger.
func (c *Client) Name() string { return Label + " at " + c.base }

// GlobalID implements settle.Ledger.
func (c *Client) GlobalID() int32 { return c.globalID }

// Now implements settle.Ledger.
func (c *Client) Now(ctx context.Context) (uint32, error) {
	var info infoJSON
	err := c.do(ctx, http.MethodGet, "/v1/info", nil, &info)
	return info.Now, err
}

// Account implements settle.Ledger.
func (c *Client) Account(ctx context.Context, addr *address.Address) (*settle.AccountState, error) {
	var a accountJSON
	if err := c.do(ctx, http.MethodGet, "/v1/account?addr="+url.QueryEscape(addr.StringRaw()), nil, &a); err != nil {
		return nil, err
	}
	out := &settle.AccountState{Status: a.Status, Balance: a.Balance, LastLT: a.LastLT}
	var err error
	if a.Code != nil {
		if out.Code, err = cell.FromBOC(a.Code); err != nil {
			return nil, fmt.Errorf("devledger account %s: code: %w", settle.Friendly(addr), err)
		}
	}
	if a.Data != nil {
		if out.Data, err = cell.FromBOC(a.Data); err != nil {
			return nil, fmt.Errorf("devledger account %s: data: %w", settle.Friendly(addr), err)
		}
	}
	return out, nil
}

// SendExternal implements settle.Ledger.
func (c *Client) SendExternal(ctx context.Context, msg *tlb.ExternalMessage) (*settle.Trace, error) {
	mc, err := tlb.ToCell(&tlb.Message{MsgType: tlb.MsgTypeExternalIn, Msg: msg})
	if err != nil {
		return nil, fmt.Errorf("devledger: serialize message: %w", err)
	}
	var tr settle.Trace
	if err := c.do(ctx, http.MethodPost, "/v1/send", mc.ToBOC(), &tr); err != nil {
		return nil, err
	}
	return &tr, nil
}

// Faucet asks the service to credit addr (simulated funds).
func (c *Client) Faucet(ctx context.Context, addr *address.Address, amount uint64) (*settle.Trace, error) {
	b, _ := json.Marshal(faucetJSON{Addr: addr.String(), Amount: amount})
	var tr settle.Trace
	if err := c.do(ctx, http.MethodPost, "/v1/faucet", b, &tr); err != nil {
		return nil, err
	}
	return &tr, nil
}

// Advance moves the service's ledger time forward.
func (c *Client) Advance(ctx context.Context, d time.Duration) error {
	b, _ := json.Marshal(advanceJSON{Seconds: int64(d / time.Second)})
	return c.do(ctx, http.MethodPost, "/v1/advance", b, &infoJSON{})
}

func (c *Client) do(ctx context.Context, method, path string, body []byte, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("devledger %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return fmt.Errorf("devledger %s %s: %w", method, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e errorJSON
		json.Unmarshal(raw, &e)
		if e.Refused {
			return fmt.Errorf("devledger: %s: %w", e.Error, settle.ErrRefused)
		}
		return fmt.Errorf("devledger %s %s: %s: %s", method, path, resp.Status, e.Error)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("devledger %s %s: decode: %w", method, path, err)
	}
	return nil
}
