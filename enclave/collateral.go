package enclave

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"sync"
	"time"
)

// FetchFunc downloads a vendor collateral document (Intel PCS, AMD KDS) by URL.
type FetchFunc func(ctx context.Context, url string) (header map[string][]string, body []byte, err error)

// ErrCollateralUnavailable means a collateral document is neither cached nor
// fetchable (offline mode).
var ErrCollateralUnavailable = errors.New("enclave: collateral unavailable (offline, not cached)")

// DefaultCollateralMaxAge is how long a fetched document is reused before it is
// fetched again.
const DefaultCollateralMaxAge = 12 * time.Hour

// maxCollateralSize caps one fetched collateral document.
const maxCollateralSize = 1 << 20

// CollateralCache holds vendor collateral by URL: Intel PCS TCB info, QE identity and
// CRLs for TDX; AMD KDS VCEK certificates, certificate chains and CRLs for SEV-SNP.
// With Fetch nil it is offline: only documents stored with Put are used, and each
// Verdict names the checks that lacked collateral. The libraries check each
// document's own signature and validity window, so a cached document is never
// trusted beyond what it proves. Safe for concurrent use.
type CollateralCache struct {
	// Fetch downloads a missing or aged document; nil means offline.
	Fetch FetchFunc
	// MaxAge is how long a fetched document is reused (0: DefaultCollateralMaxAge).
	// Documents stored with Put do not age out.
	MaxAge time.Duration

	mu      sync.Mutex
	entries map[string]collateralEntry
}

type collateralEntry struct {
	header  map[string][]string
	body    []byte
	fetched time.Time // zero: stored with Put
}

// NewCollateralCache returns a cache that fetches with fetch (nil: offline).
func NewCollateralCache(fetch FetchFunc) *CollateralCache {
	return &CollateralCache{Fetch: fetch}
}

// Put stores a document for url (for instance collateral shipped with a release, or
// fetched elsewhere); it replaces any cached copy and does not age out.
func (c *CollateralCache) Put(url string, header map[string][]string, body []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = make(map[string]collateralEntry)
	}
	c.entries[url] = collateralEntry{header: maps.Clone(header), body: append([]byte(nil), body...)}
}

// Len returns how many documents are cached.
func (c *CollateralCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// Get returns the document for url from the cache, fetching it when missing or aged
// and Fetch is set. Offline and uncached, it returns ErrCollateralUnavailable.
func (c *CollateralCache) Get(ctx context.Context, url string) (map[string][]string, []byte, error) {
	if c == nil {
		return nil, nil, fmt.Errorf("collateral %s: %w", url, ErrCollateralUnavailable)
	}
	maxAge := c.MaxAge
	if maxAge == 0 {
		maxAge = DefaultCollateralMaxAge
	}
	c.mu.Lock()
	e, ok := c.entries[url]
	c.mu.Unlock()
	fresh := ok && (e.fetched.IsZero() || time.Since(e.fetched) < maxAge)
	if fresh || c.Fetch == nil {
		if !ok {
			return nil, nil, fmt.Errorf("collateral %s: %w", url, ErrCollateralUnavailable)
		}
		return e.header, e.body, nil
	}
	header, body, err := c.Fetch(ctx, url)
	if err != nil {
		if ok { // a stale copy beats none; the library checks its nextUpdate
			return e.header, e.body, nil
		}
		return nil, nil, fmt.Errorf("fetch collateral %s: %w", url, err)
	}
	c.mu.Lock()
	if c.entries == nil {
		c.entries = make(map[string]collateralEntry)
	}
	c.entries[url] = collateralEntry{header: header, body: body, fetched: time.Now()}
	c.mu.Unlock()
	return header, body, nil
}

// HTTPFetch returns a FetchFunc that downloads with client (nil: a client with a
// 30 s timeout), refusing bodies over 1 MiB.
func HTTPFetch(client *http.Client) FetchFunc {
	if client == nil {
		client = &http.Client{Timeout: 30 * time.Second}
	}
	return func(ctx context.Context, url string) (map[string][]string, []byte, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, nil, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, nil, fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxCollateralSize+1))
		if err != nil {
			return nil, nil, fmt.Errorf("GET %s: %w", url, err)
		}
		if len(body) > maxCollateralSize {
			return nil, nil, fmt.Errorf("GET %s: body over %d bytes: %w", url, maxCollateralSize, ErrTooLarge)
		}
		return resp.Header, body, nil
	}
}

// libGetter adapts the cache to the HTTPS getter interfaces of go-tdx-guest and
// go-sev-guest for one verification, recording whether a document was missing so
// the verifier can retry without that check and say so in the verdict.
type libGetter struct {
	ctx    context.Context
	cache  *CollateralCache
	mu     sync.Mutex
	missed []string
}

func (g *libGetter) get(ctx context.Context, url string) (map[string][]string, []byte, error) {
	h, b, err := g.cache.Get(ctx, url)
	if err != nil {
		g.mu.Lock()
		g.missed = append(g.missed, url)
		g.mu.Unlock()
	}
	return h, b, err
}

func (g *libGetter) didMiss() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.missed) > 0
}

// tdxGetter implements go-tdx-guest's trust.HTTPSGetter.
type tdxGetter struct{ *libGetter }

func (g tdxGetter) Get(url string) (map[string][]string, []byte, error) { return g.get(g.ctx, url) }

// snpGetter implements go-sev-guest's trust.HTTPSGetter and ContextHTTPSGetter.
type snpGetter struct{ *libGetter }

func (g snpGetter) Get(url string) ([]byte, error) { return g.GetContext(g.ctx, url) }

func (g snpGetter) GetContext(ctx context.Context, url string) ([]byte, error) {
	_, b, err := g.get(ctx, url)
	return b, err
}
