package p2p

import (
	"context"
	"errors"
	"fmt"
	"slices"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
)

// adTopic is one model's ads topic: joined (sub set: its ads are delivered)
// or only published on (a worker's model the node has not joined).
type adTopic struct {
	model     string
	topic     *pubsub.Topic
	published bool                 // the node publishes on it: kept open when left
	sub       *pubsub.Subscription // nil: not joined
	done      chan struct{}        // closed when the reader of sub returns
}

// ErrClosed is returned by the topic methods of a closed Node.
var ErrClosed = errors.New("p2p: node closed")

// topicLocked returns model's topic, opening it (validator and score
// parameters installed) if needed. n.mu is held.
func (n *Node) topicLocked(model string) (*adTopic, error) {
	if n.closed {
		return nil, ErrClosed
	}
	if t, ok := n.topics[model]; ok {
		return t, nil
	}
	name := AdTopic(model)
	val := func(ctx context.Context, from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
		return n.validateAd(ctx, model, from, m)
	}
	if err := n.PubSub.RegisterTopicValidator(name, val); err != nil {
		return nil, fmt.Errorf("p2p: register validator of %s (%s): %w", name, model, err)
	}
	top, err := n.PubSub.Join(name)
	if err != nil {
		n.PubSub.UnregisterTopicValidator(name)
		return nil, fmt.Errorf("p2p: join %s (%s): %w", name, model, err)
	}
	if err := top.SetScoreParams(topicScoreParams()); err != nil {
		top.Close()
		n.PubSub.UnregisterTopicValidator(name)
		return nil, fmt.Errorf("p2p: score parameters of %s: %w", name, err)
	}
	t := &adTopic{model: model, topic: top}
	n.topics[model] = t
	return t, nil
}

// JoinModel subscribes to model's ads topic (AdTopic): from then on the node
// receives, validates, relays and hands to the ad handler that model's ads.
// Joining a joined model does nothing.
func (n *Node) JoinModel(model string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	t, err := n.topicLocked(model)
	if err != nil {
		return err
	}
	if t.sub != nil {
		return nil
	}
	sub, err := t.topic.Subscribe()
	if err != nil {
		return fmt.Errorf("p2p: subscribe %s (%s): %w", t.topic, model, err)
	}
	t.sub, t.done = sub, make(chan struct{})
	n.wg.Add(1)
	go n.readAds(t.model, sub, t.done)
	n.log.Debug("joined model topic", "model", model, "topic", t.topic.String())
	return nil
}

// LeaveModel unsubscribes from model's ads topic; the node stops receiving
// and relaying its ads. Leaving a model not joined does nothing.
func (n *Node) LeaveModel(model string) {
	n.mu.Lock()
	t, ok := n.topics[model]
	if !ok || t.sub == nil {
		n.mu.Unlock()
		return
	}
	t.sub.Cancel()
	done := t.done
	t.sub, t.done = nil, nil
	n.mu.Unlock()
	<-done
	n.mu.Lock()
	// A topic only joined is closed, so that the topics of models once asked
	// for do not pile up; the subscription's cancel has been handled (its
	// reader returned), so Close finds no subscription left.
	if cur, ok := n.topics[model]; ok && cur == t && t.sub == nil && !t.published && !n.closed {
		if err := t.topic.Close(); err == nil {
			n.PubSub.UnregisterTopicValidator(t.topic.String())
			delete(n.topics, model)
		}
	}
	n.mu.Unlock()
	n.log.Debug("left model topic", "model", model)
}

// JoinedModels lists the models whose ads topics the node has joined, sorted.
func (n *Node) JoinedModels() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for m, t := range n.topics {
		if t.sub != nil {
			out = append(out, m)
		}
	}
	slices.Sort(out)
	return out
}

// Joined reports whether the node has joined model's ads topic.
func (n *Node) Joined(model string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	t, ok := n.topics[model]
	return ok && t.sub != nil
}

// AdPeers lists the peers this node knows to be subscribed to model's ads
// topic (none when the node has neither joined nor published on it).
func (n *Node) AdPeers(model string) []peer.ID {
	n.mu.Lock()
	t, ok := n.topics[model]
	n.mu.Unlock()
	if !ok {
		return nil
	}
	return t.topic.ListPeers()
}

// PublishAd publishes data on model's ads topic, joining the topic for
// publishing (without subscribing) if the node has not joined it. It reaches
// every subscribed direct peer even before the gossip mesh has formed (flood
// publishing). The node's own validator checks it first.
func (n *Node) PublishAd(ctx context.Context, model string, data []byte) error {
	if len(data) > MaxAdSize {
		return fmt.Errorf("p2p: ad of %d bytes exceeds %d", len(data), MaxAdSize)
	}
	n.mu.Lock()
	t, err := n.topicLocked(model)
	if err == nil {
		t.published = true
	}
	n.mu.Unlock()
	if err != nil {
		return err
	}
	if err := t.topic.Publish(ctx, data); err != nil {
		return fmt.Errorf("p2p: publish ad of %s: %w", model, err)
	}
	return nil
}

// SetAdsValidator installs the check every ad must pass before it is delivered or
// relayed (market's schema, signer, seq, expiry, topic and rate checks), on
// every ads topic. Size is checked first; with no validator every ad within
// the size passes.
func (n *Node) SetAdsValidator(v Validator) {
	n.mu.Lock()
	n.validator = v
	n.mu.Unlock()
}

func (n *Node) validateAd(ctx context.Context, model string, from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	if len(m.Data) > MaxAdSize {
		return pubsub.ValidationReject
	}
	n.mu.Lock()
	v := n.validator
	n.mu.Unlock()
	if v == nil {
		return pubsub.ValidationAccept
	}
	return v(ctx, model, from, m.GetFrom(), m.Data)
}

// SetAdHandler installs the receiver of every validated ad of the joined
// models, including this node's own. It is called from one goroutine per
// joined model, in that topic's arrival order.
func (n *Node) SetAdHandler(fn func(model string, origin peer.ID, data []byte)) {
	n.mu.Lock()
	n.onAd = fn
	n.mu.Unlock()
}

func (n *Node) readAds(model string, sub *pubsub.Subscription, done chan struct{}) {
	defer n.wg.Done()
	defer close(done)
	for {
		m, err := sub.Next(n.ctx)
		if err != nil {
			return
		}
		n.mu.Lock()
		fn := n.onAd
		n.mu.Unlock()
		if fn != nil {
			fn(model, m.GetFrom(), m.Data)
		}
	}
}

// joinCatalogue relays TopicModels: its messages are validated (the
// catalogue validator keeps what it learns) and forwarded, never delivered.
func (n *Node) joinCatalogue() error {
	if err := n.PubSub.RegisterTopicValidator(TopicModels, n.validateCatalogue); err != nil {
		return fmt.Errorf("p2p: register validator of %s: %w", TopicModels, err)
	}
	t, err := n.PubSub.Join(TopicModels)
	if err != nil {
		return fmt.Errorf("p2p: join %s: %w", TopicModels, err)
	}
	n.Catalogue = t
	if n.catRelay, err = t.Relay(); err != nil {
		return fmt.Errorf("p2p: relay %s: %w", TopicModels, err)
	}
	return nil
}

// SetCatalogueValidator installs the check of every catalogue message (size
// is checked first). With none, every message within the size passes.
func (n *Node) SetCatalogueValidator(v CatalogueValidator) {
	n.mu.Lock()
	n.catValidator = v
	n.mu.Unlock()
}

func (n *Node) validateCatalogue(ctx context.Context, from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	if len(m.Data) > MaxCatalogueSize {
		return pubsub.ValidationReject
	}
	n.mu.Lock()
	v := n.catValidator
	n.mu.Unlock()
	if v == nil {
		return pubsub.ValidationAccept
	}
	return v(ctx, from, m.GetFrom(), m.Data)
}

// PublishCatalogue publishes data (what models this node sells) on
// TopicModels.
func (n *Node) PublishCatalogue(ctx context.Context, data []byte) error {
	if len(data) > MaxCatalogueSize {
		return fmt.Errorf("p2p: catalogue message of %d bytes exceeds %d", len(data), MaxCatalogueSize)
	}
	if err := n.Catalogue.Publish(ctx, data); err != nil {
		return fmt.Errorf("p2p: publish catalogue: %w", err)
	}
	return nil
}

// leaveAll cancels every subscription and relay and waits for the readers;
// no topic can be opened after it.
func (n *Node) leaveAll() {
	n.mu.Lock()
	n.closed = true
	var dones []chan struct{}
	for _, t := range n.topics {
		if t.sub != nil {
			t.sub.Cancel()
			dones = append(dones, t.done)
			t.sub = nil
		}
	}
	n.mu.Unlock()
	if n.catRelay != nil {
		n.catRelay()
	}
	for _, d := range dones {
		<-d
	}
}
