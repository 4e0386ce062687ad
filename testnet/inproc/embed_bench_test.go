package inproc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
	"github.com/cocoon-network/cocoon/settle"
)

// embedSentences are the inputs of BenchmarkEmbeddings: 32 short sentences,
// each subject with each ending, so that no two are alike.
func embedSentences() []string {
	subjects := []string{"Lily", "The little dog", "Tom", "A big bird"}
	endings := []string{"went to the park.", "found a red ball.", "was very happy.", "saw a cat on the mat.",
		"ate a sweet apple.", "ran to mom.", "looked at the sun.", "made a new friend."}
	var out []string
	for _, s := range subjects {
		for _, e := range endings {
			out = append(out, s+" "+e)
		}
	}
	return out
}

// embedPost sends one embeddings request to a node's gateway and returns its
// latency and the decoded answer. A single input goes as a string, several
// as an array, the two forms the API takes.
func embedPost(b *testing.B, url, token string, inputs []string) (time.Duration, openaiapi.EmbeddingList) {
	b.Helper()
	var in any = inputs
	if len(inputs) == 1 {
		in = inputs[0]
	}
	body, err := json.Marshal(map[string]any{"model": Model, "input": in})
	if err != nil {
		b.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, url+"/v1/embeddings", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	out, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	d := time.Since(start)
	if err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("POST %s/v1/embeddings: %s %s %v", url, resp.Status, out, err)
	}
	var list openaiapi.EmbeddingList
	if err := json.Unmarshal(out, &list); err != nil {
		b.Fatalf("POST %s/v1/embeddings: answer %.200s: %v", url, out, err)
	}
	return d, list
}

// checkVectors fails b unless got holds one vector per input, in order, each
// of dims values and equal to want's (the backend's own answer, computed
// again: the same model on the same inputs).
func checkVectors(b *testing.B, path string, got openaiapi.EmbeddingList, want [][]float32, dims int) {
	b.Helper()
	if len(got.Data) != len(want) {
		b.Fatalf("%s: %d vectors for %d inputs", path, len(got.Data), len(want))
	}
	for i, e := range got.Data {
		if e.Index != i || len(e.Embedding.Values) != dims {
			b.Fatalf("%s: vector %d has index %d and %d values; want index %d of %d", path, i, e.Index, len(e.Embedding.Values), i, dims)
		}
		for j, x := range e.Embedding.Values {
			if math.Abs(float64(x-want[i][j])) > 1e-5 {
				b.Fatalf("%s: vector %d[%d] = %g; the backend's is %g", path, i, j, x, want[i][j])
			}
		}
	}
}

// BenchmarkEmbeddings measures, in one run and on the same embedded llama.cpp
// backend of the shared model (one thread), embeddings of a batch of 32
// one-sentence inputs and of a single input, by three paths taken in turn in
// each iteration:
//
//   - direct: the worker's backend's Embed (runtime.Limited, as the job
//     protocol's worker calls it);
//   - http: POST /v1/embeddings to the worker node's own gateway, which runs
//     the model itself;
//   - overlay: POST /v1/embeddings to a client node's gateway, which buys them
//     from the worker (mocknet, sim TEE attested on the warm-up job, the job
//     protocol, vouchers fsynced on both sides).
//
// It reports inputs per second by each path, the ratio overlay/direct, and the
// milliseconds each request adds to direct on average. It fails on a wrong
// answer (the number, order or dimension of the vectors, or vectors unlike
// the backend's) and on books that do not balance: what the worker can claim
// equals what the client's channel sent, what the answers said they cost, and
// the cost of their tokens at the worker's prompt price; never on a figure.
func BenchmarkEmbeddings(b *testing.B) {
	tn := New(b, Nodes(2), Workers(1))
	client, worker := tn.Clients()[0], tn.WorkerNodes()[0]
	gw, wgw := "http://"+client.APIAddr, "http://"+worker.APIAddr
	dims := 0
	for _, m := range worker.Backend.Models() {
		if m.ID == Model {
			dims = m.EmbeddingDims
		}
	}
	if dims <= 0 {
		b.Fatalf("worker's model %s declares %d embedding dimensions", Model, dims)
	}
	ctx := context.Background()
	var told, cost uint64 // Σ usage.cost_nanoton; Σ cost of the answers' tokens
	overlayOnce := func(b *testing.B, inputs []string, want [][]float32) time.Duration {
		d, list := embedPost(b, gw, client.Token, inputs)
		checkVectors(b, "overlay", list, want, dims)
		if list.Usage.CostNanoTON == nil || list.Usage.PromptTokens <= 0 {
			b.Fatalf("overlay: usage %+v: want prompt tokens and a cost", list.Usage)
		}
		c, err := market.Cost(worker.Price, uint64(list.Usage.PromptTokens), 0)
		if err != nil {
			b.Fatal(err)
		}
		told += *list.Usage.CostNanoTON
		cost += c
		return d
	}

	batch := embedSentences()
	// Warm up: the first Embed makes the backend's embeddings context, and the
	// client attests the worker on its first job; the figures are of warm paths.
	ref, err := worker.Backend.Embed(ctx, runtime.EmbedRequest{Model: Model, Inputs: batch})
	if err != nil {
		b.Fatalf("warm-up: %v", err)
	}
	overlayOnce(b, batch, ref.Vectors)

	for _, inputs := range [][]string{batch, batch[:1]} {
		b.Run(fmt.Sprintf("inputs=%d", len(inputs)), func(b *testing.B) {
			want := ref.Vectors[:len(inputs)]
			req := runtime.EmbedRequest{Model: Model, Inputs: inputs}
			var direct, local, overlay time.Duration
			n := 0
			for b.Loop() {
				start := time.Now()
				e, err := worker.Backend.Embed(ctx, req)
				direct += time.Since(start)
				if err != nil {
					b.Fatalf("direct: %v", err)
				}
				list := openaiapi.EmbeddingList{}
				for i, v := range e.Vectors {
					list.Data = append(list.Data, openaiapi.Embedding{Index: i, Embedding: openaiapi.Vector{Values: v}})
				}
				checkVectors(b, "direct", list, want, dims)

				d, list := embedPost(b, wgw, worker.Token, inputs)
				local += d
				checkVectors(b, "http", list, want, dims)
				if list.Usage.CostNanoTON != nil {
					b.Fatalf("http: the worker's own gateway charged %d nanoTON for its own model", *list.Usage.CostNanoTON)
				}

				overlay += overlayOnce(b, inputs, want)
				n++
			}
			// After b.Loop, which resets metrics.
			perSec := func(d time.Duration) float64 { return float64(n*len(inputs)) / d.Seconds() }
			perReqMs := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(n) }
			b.ReportMetric(perSec(direct), "direct-inputs/s")
			b.ReportMetric(perSec(local), "http-inputs/s")
			b.ReportMetric(perSec(overlay), "overlay-inputs/s")
			b.ReportMetric(perSec(overlay)/perSec(direct), "overlay/direct")
			b.ReportMetric(perReqMs(local)-perReqMs(direct), "http-added-ms")
			b.ReportMetric(perReqMs(overlay)-perReqMs(direct), "overlay-added-ms")
		})
	}

	// An answer arrives before its job's final voucher is on the client's disk
	// (the commit loop writes it) and at the worker (nothing waits for that):
	// the books are read once the worker holds what the client signed.
	ch := client.Channels[worker.Index]
	var bal uint64
	var rec settle.Record
	tn.WaitFor(10*time.Second, "the worker's balance to reach what the client's channel sent", func() bool {
		if client.Payer.Flush() != nil || worker.Payee.Flush() != nil {
			return false
		}
		var err1, err2 error
		rec, err1 = client.Payer.Latest(ch)
		bal, err2 = worker.Payee.Balance(ch)
		return err1 == nil && err2 == nil && bal == rec.Sent
	})
	if bal != cost || told != cost || rec.Sent != cost {
		b.Errorf("books: worker can claim %d, client's channel sent %d, answers said %d, their tokens cost %d; want all equal",
			bal, rec.Sent, told, cost)
	}
}
