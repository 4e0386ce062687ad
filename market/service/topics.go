package service

import (
	"time"
)

// Defaults of the client's ads topics.
const (
	// DefaultTopicIdle is how long the client stays joined to the ads topic of
	// a model nobody has asked for (ClientConfig.TopicIdle).
	DefaultTopicIdle = 10 * time.Minute
	// MaxAskedTopics bounds the ads topics joined because a request asked for
	// their model (the pinned ones come on top): past it, a request for yet
	// another model is served from the DHT's providers without joining.
	MaxAskedTopics = 64
)

// topics is the client's record of the ads topics it joined: the pinned ones
// (served or configured: never left) and those a request asked for, with the
// time of the last ask.
type topics struct {
	pinned map[string]bool
	asked  map[string]time.Time
}

// pin joins the topics of models for good; called by NewClient.
func (c *Client) pin(models []string) error {
	c.topicMu.Lock()
	defer c.topicMu.Unlock()
	for _, m := range models {
		if err := c.node.JoinModel(m); err != nil {
			return err
		}
		c.topics.pinned[m] = true
	}
	return nil
}

// ask records a request for model and joins its ads topic if the client has
// not joined it. It reports whether the topic was joined before this ask:
// when not, the book has no ads of the model yet, and the request goes to the
// DHT's providers (Client.candidates' cold path) while the ads come.
func (c *Client) ask(model string) bool {
	now := c.now()
	c.topicMu.Lock()
	defer c.topicMu.Unlock()
	if c.topics.pinned[model] {
		return true
	}
	if _, ok := c.topics.asked[model]; ok {
		c.topics.asked[model] = now
		return true
	}
	if len(c.topics.asked) >= MaxAskedTopics {
		return false
	}
	if err := c.node.JoinModel(model); err != nil {
		c.log.Warn("join model topic", "model", model, "err", err)
		return false
	}
	c.topics.asked[model] = now
	c.log.Debug("joined the ads topic of a model asked for", "model", model)
	return false
}

// leaveIdle leaves the ads topics of the models not asked for in TopicIdle
// (pinned ones stay); their ads in the book expire on their own.
func (c *Client) leaveIdle() {
	now := c.now()
	var idle []string
	c.topicMu.Lock()
	for m, at := range c.topics.asked {
		if now.Sub(at) >= c.cfg.TopicIdle {
			idle = append(idle, m)
			delete(c.topics.asked, m)
		}
	}
	c.topicMu.Unlock()
	for _, m := range idle {
		c.node.LeaveModel(m)
		c.log.Debug("left the ads topic of a model nobody asked for", "model", m, "idle", c.cfg.TopicIdle)
	}
}

// Joined lists the models whose ads topics the client has joined: pinned
// (served or configured) and asked for.
func (c *Client) Joined() []string { return c.node.JoinedModels() }
