package gateway

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"

	"golang.org/x/net/netutil"

	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// Status is the node's answer to GET /api/v0/status.
type Status struct {
	PeerID        string   `json:"peer_id"`
	Addrs         []string `json:"addrs"`
	Peers         int      `json:"peers"`
	UptimeSeconds float64  `json:"uptime_seconds"`
	Version       string   `json:"version"`
	// Models this node serves itself, with its slots; empty on a client-only node.
	Models []Model `json:"models"`
	Slots  struct {
		Total  int `json:"total"`
		Free   int `json:"free"`
		Queued int `json:"queued"`
	} `json:"slots"`
	GPUs      []GPU  `json:"gpus"`
	GPUReason string `json:"gpu_reason,omitempty"` // why GPUs is empty
	// Reachability is whether peers can dial this node and how it is
	// connected (p2p.Node.Reachability).
	Reachability Reachability `json:"reachability"`
}

// Reachability is AutoNAT's verdict on a node and the state of its
// connections.
type Reachability struct {
	Verdict string   `json:"verdict"` // public, private or unknown
	Relays  []string `json:"relays"`  // peer IDs of the relays holding a reservation for it
	// Direct and Relayed count its open connections of each kind.
	Direct  int `json:"direct"`
	Relayed int `json:"relayed"`
	// HolePunches and HolePunchFailures count DCUtR attempts since start
	// that upgraded a relayed connection to a direct one, or did not.
	HolePunches       int64 `json:"hole_punches"`
	HolePunchFailures int64 `json:"hole_punch_failures"`
}

// Model is one model a node serves.
type Model struct {
	ID            string `json:"id"`
	Digest        string `json:"digest"`
	ContextLength int    `json:"context_length"`
	// Offload says which llama.cpp build runs it and how many of its layers
	// are on a GPU (the embedded backend only).
	Offload *runtime.Offload `json:"offload,omitempty"`
}

// GPU is one accelerator of the node's machine.
type GPU struct {
	Name      string `json:"name"`
	VRAMBytes uint64 `json:"vram_bytes"`
	Driver    string `json:"driver"`
}

// Peer is one connected peer in GET /api/v0/peers.
type Peer struct {
	ID        string   `json:"id"`
	Addrs     []string `json:"addrs"`
	Direction string   `json:"direction"`
	LatencyMS float64  `json:"latency_ms"`
}

// Info is what the gateway asks of the node it serves. Its methods are called
// from request goroutines, concurrently.
type Info interface {
	Status() Status
	Peers() []Peer
	// Overview is everything the status page shows.
	Overview() Overview
}

// Server is the node's local HTTP API. Every request needs the bearer token,
// except the status page's GETs, which also take the cookie that GET /?token=
// sets (see cookieAllowed). Its Limits bound slow requests, connections and
// failed authentications.
type Server struct {
	token    string
	info     Info
	log      *slog.Logger
	mux      *http.ServeMux
	srv      *http.Server
	limits   Limits
	throttle *authThrottle // nil: failed authentications are not throttled
	route    *route        // /v1's backend; nil: no /v1 (WithV1)
	metrics  http.Handler  // GET /metrics; nil: none (WithMetrics)
}

// New returns a server for info guarded by token: /api/v0 and the status page,
// and what the options add (/v1, /metrics, limits). log (nil: slog.Default())
// also goes to the OpenAI handler.
func New(token string, info Info, log *slog.Logger, opts ...Option) *Server {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{token: token, info: info, log: log.With("subsys", "gateway"), mux: http.NewServeMux()}
	for _, o := range opts {
		o(s)
	}
	s.limits = s.limits.withDefaults()
	s.throttle = newAuthThrottle(s.limits.AuthBurst, s.limits.AuthEvery)
	s.mux.HandleFunc("GET /api/v0/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.info.Status())
	})
	s.mux.HandleFunc("GET /api/v0/peers", func(w http.ResponseWriter, r *http.Request) {
		peers := s.info.Peers()
		if peers == nil {
			peers = []Peer{}
		}
		writeJSON(w, http.StatusOK, peers)
	})
	s.mux.HandleFunc("GET /api/v0/overview", s.serveOverview)
	s.mux.HandleFunc("GET /api/v0/overview.html", s.serveLive)
	s.mux.HandleFunc("GET /{$}", s.servePage)
	if s.route != nil {
		h := openaiapi.NewHandler(s.route)
		h.Logger = log
		s.mux.Handle("/v1/", h)
	}
	if s.metrics != nil {
		s.mux.Handle("GET /metrics", s.metrics)
	}
	s.srv = &http.Server{
		Handler:           s.bodyDeadlines(s.auth(s.mux)),
		ReadHeaderTimeout: s.limits.ReadHeader,
		IdleTimeout:       s.limits.Idle,
	}
	return s
}

// WithV1 serves the OpenAI API at /v1 (openaiapi.Handler): a request for a
// model local runs is answered by local.Backend, every other is bought on net
// (see route).
func WithV1(net Network, local Local) Option {
	return func(s *Server) { s.route = newRoute(net, local) }
}

// WithMetrics serves h at GET /metrics, behind the bearer token (node/metrics'
// Prometheus handler; Prometheus sends the token from api.token).
func WithMetrics(h http.Handler) Option { return func(s *Server) { s.metrics = h } }

// Handler returns the whole API with authentication, for tests and embedding.
func (s *Server) Handler() http.Handler { return s.srv.Handler }

func (s *Server) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		authed := ok && subtle.ConstantTimeCompare([]byte(got), []byte(s.token)) == 1
		page := r.Method == http.MethodGet && r.URL.Path == "/"
		if page && r.URL.Query().Has("token") {
			tok := r.URL.Query().Get("token")
			if subtle.ConstantTimeCompare([]byte(tok), []byte(s.token)) != 1 && !s.mayFail(w, r) {
				return
			}
			s.signIn(w, r, tok)
			return
		}
		if !authed && cookieAllowed(r) && s.cookieOK(r) {
			authed = true
		}
		if !authed && !s.mayFail(w, r) {
			return
		}
		if !authed && page {
			s.unauthorizedPage(w, r, "")
			return
		}
		if !authed {
			w.Header().Set("WWW-Authenticate", `Bearer realm="cocoon"`)
			writeError(w, http.StatusUnauthorized, "invalid_api_key",
				"missing or wrong bearer token: send 'Authorization: Bearer <token>' with the token from <datadir>/api.token")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// mayFail counts a failed authentication of r against its source address. It
// reports whether the failure may be answered as usual (401); if not, it has
// answered 429 with Retry-After. The token is 256 random bits, so throttling
// is not what stops guessing it: it bounds what a flood of bad requests costs
// and tells a misconfigured client to back off. A correct token is never
// throttled, because every local process shares the source 127.0.0.1 and one
// of them must not be able to lock the others out.
func (s *Server) mayFail(w http.ResponseWriter, r *http.Request) bool {
	if s.throttle == nil {
		return true
	}
	ok, retry, first := s.throttle.fail(source(r))
	if ok {
		return true
	}
	secs := max(int(math.Ceil(retry.Seconds())), 1)
	if first {
		s.log.Warn("failed authentications: source throttled", "remote", r.RemoteAddr, "retry_after_s", secs)
	}
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	writeError(w, http.StatusTooManyRequests, "rate_limit_exceeded",
		fmt.Sprintf("too many requests with a missing or wrong bearer token from this address: retry in %d s", secs))
	return false
}

// Serve answers requests on l until Shutdown; it then returns
// http.ErrServerClosed. At most Limits.MaxConns connections are served at
// once; more wait in l's backlog.
func (s *Server) Serve(l net.Listener) error {
	s.log.Info("api listening", "addr", l.Addr().String(), "max_conns", s.limits.MaxConns)
	if n := s.limits.MaxConns; n > 0 {
		l = netutil.LimitListener(l, n)
	}
	return s.srv.Serve(l)
}

// Shutdown stops accepting requests and waits for those in flight until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// writeError writes an OpenAI-style error body.
func writeError(w http.ResponseWriter, code int, typ, msg string) {
	writeJSON(w, code, map[string]any{"error": map[string]any{"message": msg, "type": typ, "code": typ}})
}
