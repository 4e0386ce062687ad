package market

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/cocoon-network/cocoon/market/pb"
	"github.com/cocoon-network/cocoon/runtime"
)

// The largest request runtime.Request.Check lets through fits a worker's
// prompt frame: the gateway's 400 is the only refusal a caller meets for
// size, never a stream reset halfway through the network.
func TestCheckedRequestFitsThePromptFrame(t *testing.T) {
	req := runtime.Request{Model: "m", Temperature: 1}
	per := runtime.MaxTextBytes / runtime.MaxMessages
	img := "data:image/png;base64," + strings.Repeat("A", runtime.MaxImageBytes/runtime.MaxImages-len("data:image/png;base64,"))
	for i := range runtime.MaxMessages {
		m := runtime.Message{Role: "developer", Content: strings.Repeat("\u00e9", per/2)}
		if i < runtime.MaxImages { // the images' bytes too
			m.Role = "user"
			m.Images = []runtime.Image{{URL: img, Detail: "high", At: len(m.Content)}}
		}
		req.Messages = append(req.Messages, m)
	}
	if err := req.Check(); err != nil {
		t.Fatalf("the largest request is refused: %v", err)
	}
	msgs := messagesToPB(req.Messages)
	f := &pb.Frame{Msg: &pb.Frame_Prompt{Prompt: &pb.Prompt{Messages: msgs}}}
	if n := proto.Size(f) + 10; n > DefaultMaxPromptFrame { // +10: the length prefix
		t.Fatalf("a checked request makes a %d-byte prompt frame; workers read at most %d", n, DefaultMaxPromptFrame)
	}
	req.Messages[0].Content += strings.Repeat("a", runtime.MaxTextBytes)
	if err := req.Check(); err == nil {
		t.Fatal("text over MaxTextBytes passed the check")
	}
}
