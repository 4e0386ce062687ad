package market

import (
	"context"
	"log/slog"
	"math"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/internal/testmodel"
	"github.com/cocoon-network/cocoon/market/pb"
	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/runner"
)

// The real engine for FuzzEngineJob: the shared test model in a runner child
// of this test binary, started once per process (each fuzz worker has its own).
var engine struct {
	once sync.Once
	b    *runner.Backend
	err  error
}

const engineModel = "stories260K"

func realEngine(t testing.TB) *runner.Backend {
	engine.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		engine.b, engine.err = runner.New(ctx, runner.Config{
			LibDir:   testmodel.LibDir(),
			Models:   []runtime.ModelConfig{{Path: testmodel.ModelPath(t), ID: engineModel}},
			Threads:  1,
			Parallel: 1,
			// A short context keeps each execution short: prompt decoding on
			// the CPU grows with the square of the prompt (2,000 tokens take
			// ~4 s here), and longer prompts take the refusal path.
			ContextSize: 256,
			Logger:      slog.New(slog.DiscardHandler),
		})
	})
	if engine.err != nil {
		t.Fatalf("engine: %v", engine.err)
	}
	return engine.b
}

// FuzzEngineJob feeds arbitrary requests through the worker's side of the
// job protocol into the embedded llama.cpp engine on the shared model, the
// way a hostile client would: any model, role, text (NUL, control
// characters, long runs of one token), max_tokens, temperature, top_p, stop
// and seed. Each job must end (Done, Reject or Cancel) and the engine must
// never crash: a native crash in the child is a restart the fuzzer sees as a
// failure, with the input that caused it.
func FuzzEngineJob(f *testing.F) {
	f.Add(engineModel, "user", "Once upon a time", "", "", uint32(16), 0.0, 0.0, ".", uint64(1), false)
	f.Add(engineModel, "user", "a\x00b", "", "", uint32(8), 0.8, 0.9, "", uint64(2), false)
	f.Add(engineModel, "", "", "a\x00b", "", uint32(8), 0.0, 0.0, "", uint64(3), true)
	f.Add(engineModel, "user", "\x01\x02\x1b[31m\x7f\u202e\ufeff", "", "", uint32(8), 1.0, 1.0, "\x1b", uint64(4), false)
	f.Add(engineModel, "", "", strings.Repeat("a", 8<<10), "", uint32(4), 0.0, 0.0, "", uint64(5), true)
	f.Add(engineModel, "assistant", "The", "", " cat", uint32(4294967295), 2.0, 0.5, "the", uint64(6), false)
	f.Add(engineModel, "user", "hi", "", "", uint32(1), math.NaN(), math.Inf(1), "", uint64(7), false)
	f.Add("other", "root", "hi", "", "", uint32(0), -1.0, 2.0, "", uint64(8), false)
	f.Fuzz(func(t *testing.T, model, role, content, prompt, cont string, maxTokens uint32, temp, topP float64, stop string, seed uint64, raw bool) {
		b := realEngine(t)
		restarts := b.Children()[0].Restarts
		const credit = 16
		w := &Worker{Backend: b, Payee: newMemChannel().payee(), Logger: slog.New(slog.DiscardHandler), Prices: map[string]Price{engineModel: {Completion: 1_000}},
			CreditTokens: credit, Timeouts: Timeouts{Open: 5 * time.Second, Prompt: 5 * time.Second, Voucher: 200 * time.Millisecond}}
		cc, wc := net.Pipe()
		defer cc.Close()
		served := make(chan error, 1)
		go func() { served <- w.Serve(context.Background(), wc); wc.Close() }()

		params := &pb.Params{MaxTokens: maxTokens, Temperature: temp, TopP: topP, Seed: &seed}
		if stop != "" {
			params.Stop = []string{stop}
		}
		pr := &pb.Prompt{Continuation: cont}
		if raw {
			pr.Prompt = prompt
		} else {
			pr.Messages = []*pb.ChatMessage{{Role: role, Content: content}}
		}
		id := NewJobID()
		p := newRawPeer(t, cc)
		go func() {
			// Strings that are not UTF-8 cannot be marshalled: such an
			// Open or Prompt never leaves the client, and the worker ends
			// on the closed stream.
			if p.send(&pb.Frame{Msg: &pb.Frame_Open{Open: &pb.Open{JobId: id[:], Model: model, Params: params}}}) != nil ||
				p.send(&pb.Frame{Msg: &pb.Frame_Prompt{Prompt: pr}}) != nil {
				cc.Close()
			}
		}()
		sent := uint32(0)
	read:
		for {
			fr, err := p.recv()
			if err != nil {
				break
			}
			switch m := fr.Msg.(type) {
			case *pb.Frame_Chunk:
				sent = m.Chunk.TokensSoFar
				if sent >= credit { // the window is spent and nobody pays: stop it
					p.send(&pb.Frame{Msg: &pb.Frame_Cancel{Cancel: &pb.Cancel{Code: pb.CancelCode_CANCEL_CLIENT}}})
				}
			case *pb.Frame_Done, *pb.Frame_Reject, *pb.Frame_Cancel:
				break read
			}
		}
		cc.Close()
		select {
		case <-served:
		case <-time.After(30 * time.Second):
			t.Fatal("the worker did not end within 30 s of the client leaving")
		}
		if sent > credit {
			t.Fatalf("worker sent %d unpaid tokens; credit is %d", sent, credit)
		}
		if c := b.Children()[0]; c.Restarts != restarts || c.PID == 0 {
			t.Fatalf("the engine crashed on this input (%+v)", c)
		}
	})
}
