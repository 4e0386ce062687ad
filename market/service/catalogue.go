package service

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/p2p"
)

// The catalogue (p2p.TopicModels): every node relays it, so that /v1/models
// can name the network's models without joining each model's ads topic. A
// worker publishes the ids of the models it sells there, one per line
// (at most p2p.MaxCatalogueSize bytes, MaxCatalogueModels ids), every
// CatalogueEvery. The validator takes per origin CatalogueBurst (2) messages,
// refilled at one per CatalogueEvery (5 min); more is rejected (ignored when
// relayed), and FloodExcess (3) beyond that, refilled at one per
// CatalogueEvery, blocks the origin as an ad flood does. A node lists an origin's models for
// CatalogueTTL after its last message, at most MaxCatalogueOrigins origins.
// The names are unverified hints: listed "joined": false, with no price, and
// a request for one joins its topic and asks the DHT for its providers.
const (
	CatalogueEvery      = 5 * time.Minute
	CatalogueBurst      = 2
	CatalogueTTL        = 3 * CatalogueEvery
	MaxCatalogueModels  = 32
	MaxCatalogueOrigins = 4096
	maxCatalogueModelID = 256
)

var catalogueRule = rateRule{
	perSec: 1 / CatalogueEvery.Seconds(), burst: CatalogueBurst,
	floodPerSec: 1 / CatalogueEvery.Seconds(), floodBurst: FloodExcess,
}

// catalogueKey is the limiter's topic key of the catalogue (model ids never
// contain a newline, so it collides with none).
const catalogueKey = "\n" + p2p.TopicModels

// EncodeCatalogue is the catalogue message of models: their ids, one per line.
func EncodeCatalogue(models []string) []byte {
	return []byte(strings.Join(models, "\n"))
}

// DecodeCatalogue parses a catalogue message; ok is false for one that breaks
// the format (empty, too many ids, an id empty, over 256 bytes, not UTF-8,
// with a control character, or repeated).
func DecodeCatalogue(b []byte) (models []string, ok bool) {
	if len(b) == 0 || len(b) > p2p.MaxCatalogueSize || !utf8.Valid(b) {
		return nil, false
	}
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		id := string(line)
		if !ValidModelID(id) || slices.Contains(models, id) || len(models) == MaxCatalogueModels {
			return nil, false
		}
		models = append(models, id)
	}
	return models, true
}

// ValidModelID reports whether id can be named in the catalogue: 1 to 256
// bytes of UTF-8 without control characters.
func ValidModelID(id string) bool {
	return id != "" && len(id) <= maxCatalogueModelID && utf8.ValidString(id) &&
		!strings.ContainsFunc(id, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// catalogue is what the catalogue topic told this client: each origin's
// model ids and when it last said them.
type catalogue struct {
	mu  sync.Mutex
	ads map[peer.ID]catalogueEntry
}

type catalogueEntry struct {
	models []string
	at     time.Time
}

// validateCatalogue is the catalogue topic's validator.
func (c *Client) validateCatalogue(_ context.Context, from, origin peer.ID, data []byte) pubsub.ValidationResult {
	models, ok := DecodeCatalogue(data)
	if !ok {
		return pubsub.ValidationReject
	}
	now := c.now()
	if origin != c.node.Host.ID() {
		ok, flood := c.rates.take(rateKey{origin, catalogueKey}, catalogueRule, now)
		if flood {
			c.block(origin, "catalogue flood")
			return pubsub.ValidationReject
		}
		if !ok {
			if from == origin {
				return pubsub.ValidationReject
			}
			return pubsub.ValidationIgnore
		}
	}
	c.cat.mu.Lock()
	defer c.cat.mu.Unlock()
	if c.node.Blocked(origin) {
		// Validated concurrently with what got it blocked: the block dropped
		// its entry (under cat.mu, after blocking) and forgot its rate, and
		// this message would list its models again.
		return pubsub.ValidationIgnore
	}
	if _, known := c.cat.ads[origin]; !known && len(c.cat.ads) >= MaxCatalogueOrigins {
		c.pruneCatalogueLocked(now)
		if len(c.cat.ads) >= MaxCatalogueOrigins {
			return pubsub.ValidationIgnore
		}
	}
	c.cat.ads[origin] = catalogueEntry{models: models, at: now}
	return pubsub.ValidationAccept
}

func (c *Client) pruneCatalogueLocked(now time.Time) {
	for p, e := range c.cat.ads {
		if now.Sub(e.at) >= CatalogueTTL {
			delete(c.cat.ads, p)
		}
	}
}

// catalogued lists the model ids the catalogue names now, sorted.
func (c *Client) catalogued() []string {
	now := c.now()
	c.cat.mu.Lock()
	defer c.cat.mu.Unlock()
	c.pruneCatalogueLocked(now)
	seen := map[string]bool{}
	var out []string
	for _, e := range c.cat.ads {
		for _, m := range e.models {
			if !seen[m] {
				seen[m] = true
				out = append(out, m)
			}
		}
	}
	slices.Sort(out)
	return out
}
