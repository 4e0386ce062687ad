package openaiapi_test

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// embedder is a script backend that serves embeddings.
type embedder struct {
	*script
}

func (e embedder) Embed(ctx context.Context, req runtime.EmbedRequest) (runtime.Embeddings, error) {
	if req.Model != e.model.ID {
		return runtime.Embeddings{}, runtime.ErrUnknownModel
	}
	return e.embed(req)
}

// lengths embeds each input as {len, -len/3, 1e-7}, reading one token per byte.
func lengths(cost *uint64) func(runtime.EmbedRequest) (runtime.Embeddings, error) {
	return func(req runtime.EmbedRequest) (runtime.Embeddings, error) {
		out := runtime.Embeddings{CostNanoTON: cost}
		for _, in := range req.Inputs {
			n := float32(len(in))
			out.Vectors = append(out.Vectors, []float32{n, -n / 3, 1e-7})
			out.PromptTokens += len(in)
		}
		return out, nil
	}
}

func TestEmbeddings(t *testing.T) {
	cost := uint64(42)
	m := runtime.Model{ID: "e", Embeddings: true, EmbeddingDims: 3}
	srv := httptest.NewServer(openaiapi.NewHandler(embedder{&script{model: m, embed: lengths(&cost)}}))
	defer srv.Close()
	want := [][]float32{{2, -2.0 / 3, 1e-7}, {5, -5.0 / 3, 1e-7}}

	for _, format := range []string{"", `,"encoding_format":"float"`, `,"encoding_format":"base64"`} {
		resp := post(t, srv.URL+"/v1/embeddings", `{"model":"e","input":["ab","cdefg"],"user":"u","dimensions":null`+format+`}`)
		var raw map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %d %v", format, resp.StatusCode, err)
		}
		usage := raw["usage"].(map[string]any)
		if raw["object"] != "list" || raw["model"] != "e" || usage["prompt_tokens"] != 7.0 || usage["total_tokens"] != 7.0 || usage["cost_nanoton"] != 42.0 {
			t.Errorf("%s: answer %v", format, raw)
		}
		data := raw["data"].([]any)
		if len(data) != 2 {
			t.Fatalf("%s: data %v", format, data)
		}
		for i, d := range data {
			d := d.(map[string]any)
			if d["object"] != "embedding" || d["index"] != float64(i) {
				t.Errorf("%s: data[%d] = %v", format, i, d)
			}
			var got []float32
			if s, ok := d["embedding"].(string); ok {
				if !strings.Contains(format, "base64") {
					t.Errorf("%s: base64 answer unasked", format)
				}
				b, err := base64.StdEncoding.DecodeString(s)
				if err != nil || len(b) != 12 {
					t.Fatalf("base64 %q: %v", s, err)
				}
				for j := 0; j < len(b); j += 4 {
					got = append(got, math.Float32frombits(binary.LittleEndian.Uint32(b[j:])))
				}
			} else {
				for _, f := range d["embedding"].([]any) {
					got = append(got, float32(f.(float64)))
				}
			}
			if !reflect.DeepEqual(got, want[i]) {
				t.Errorf("%s: vector %d = %v; want %v exactly", format, i, got, want[i])
			}
		}
	}

	// A client's decoding of either form gives the same vectors.
	for _, format := range []string{"float", "base64"} {
		resp := post(t, srv.URL+"/v1/embeddings", `{"model":"e","input":"ab","encoding_format":"`+format+`"}`)
		l := decode[openaiapi.EmbeddingList](t, resp.Body)
		if len(l.Data) != 1 || !reflect.DeepEqual(l.Data[0].Embedding.Values, want[0]) || l.Data[0].Embedding.Base64 != (format == "base64") {
			t.Errorf("%s: %+v", format, l)
		}
	}
}

func TestEmbeddingsRefused(t *testing.T) {
	m := runtime.Model{ID: "e", Embeddings: true, EmbeddingDims: 3}
	srv := httptest.NewServer(openaiapi.NewHandler(embedder{&script{model: m, embed: lengths(nil)}}))
	defer srv.Close()
	many := `"x"` + strings.Repeat(`,"x"`, runtime.MaxEmbedInputs)
	for _, tc := range []struct {
		body        string
		status      int
		param, code string
	}{
		{`{"model":"e","input":[1,2,3]}`, 400, "input", "unsupported_value"},
		{`{"model":"e","input":[[1,2],[3]]}`, 400, "input", "unsupported_value"},
		{`{"model":"e","input":["a",5]}`, 400, "input", "unsupported_value"},
		{`{"model":"e","input":["a",null]}`, 400, "input[1]", ""},
		{`{"model":"e","input":["a",""]}`, 400, "input[1]", ""},
		{`{"model":"e","input":""}`, 400, "input[0]", ""},
		{`{"model":"e","input":["a\u0000"]}`, 400, "input[0]", ""},
		{`{"model":"e","input":[]}`, 400, "input", ""},
		{`{"model":"e"}`, 400, "input", ""},
		{`{"model":"e","input":[` + many + `]}`, 400, "input", ""},
		{`{"model":"e","input":"a","dimensions":256}`, 400, "dimensions", "unsupported_parameter"},
		{`{"model":"e","input":"a","encoding_format":"int8"}`, 400, "encoding_format", "unsupported_value"},
		{`{"model":"e","input":"a","user":7}`, 400, "user", ""},
		{`{"model":"e","input":"a","extra":1}`, 400, "extra", "unknown_parameter"},
		{`{"input":"a"}`, 400, "model", ""},
		{`{"model":"e","input":"` + strings.Repeat("a", openaiapi.MaxBodyBytes) + `"}`, 413, "", "request_too_large"},
		{`{"model":"nope","input":"a"}`, 404, "model", "model_not_found"},
	} {
		resp := post(t, srv.URL+"/v1/embeddings", tc.body)
		e := decode[openaiapi.ErrorResponse](t, resp.Body)
		param, code := "", ""
		if e.Error.Param != nil {
			param = *e.Error.Param
		}
		if e.Error.Code != nil {
			code = *e.Error.Code
		}
		if resp.StatusCode != tc.status || param != tc.param || code != tc.code {
			t.Errorf("%.70s: %d param %q code %q (%s); want %d param %q code %q", tc.body, resp.StatusCode, param, code, e.Error.Message, tc.status, tc.param, tc.code)
		}
	}

	// A listed model that serves no embeddings: 400 naming the model.
	chat := httptest.NewServer(openaiapi.NewHandler(embedder{&script{model: everything, embed: lengths(nil)}}))
	defer chat.Close()
	resp := post(t, chat.URL+"/v1/embeddings", `{"model":"m","input":"a"}`)
	if e := decode[openaiapi.ErrorResponse](t, resp.Body); resp.StatusCode != 400 || e.Error.Param == nil || *e.Error.Param != "model" {
		t.Errorf("chat model: %d %+v; want 400 naming model", resp.StatusCode, e.Error)
	}
	// A backend that serves no embeddings at all.
	plain := httptest.NewServer(openaiapi.NewHandler(&fake{}))
	defer plain.Close()
	resp = post(t, plain.URL+"/v1/embeddings", `{"model":"m","input":"a"}`)
	if e := decode[openaiapi.ErrorResponse](t, resp.Body); resp.StatusCode != 404 || !strings.Contains(e.Error.Message, "embeddings are not served here") {
		t.Errorf("no embedder: %d %+v; want 404", resp.StatusCode, e.Error)
	}
	// A backend that answers the wrong number of vectors, or not finite ones: 502.
	for _, bad := range [][][]float32{{}, {{float32(math.NaN())}}} {
		b := embedder{&script{model: m, embed: func(runtime.EmbedRequest) (runtime.Embeddings, error) {
			return runtime.Embeddings{Vectors: bad}, nil
		}}}
		srv := httptest.NewServer(openaiapi.NewHandler(b))
		resp := post(t, srv.URL+"/v1/embeddings", `{"model":"e","input":"a"}`)
		if resp.StatusCode != 502 {
			t.Errorf("vectors %v: %d; want 502", bad, resp.StatusCode)
		}
		srv.Close()
	}
}

var goldenEmbeddings = []string{
	`{"model":"e","input":"hello"}`,
	`{"model":"e","input":["a","b"],"encoding_format":"base64","user":"u","dimensions":null}`,
	`{"model":"e","input":[1,2]}`,
	`{"model":"e","input":["a",""]}`,
	`{"model":"e","input":"a","dimensions":3}`,
	`{"model":"e","input":"a","encoding_format":"float"}`,
	`{"model":"","input":"a"}`,
}

// FuzzDecodeEmbeddingRequest: no input panics; every error is a 400 or
// 413 API error; an accepted request passes runtime.EmbedRequest.Check and
// encoding it decodes to the same request.
func FuzzDecodeEmbeddingRequest(f *testing.F) {
	for _, g := range goldenEmbeddings {
		f.Add([]byte(g))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, er, err := openaiapi.DecodeEmbeddingRequest(strings.NewReader(string(b)))
		if err != nil {
			var e *openaiapi.Error
			if !errors.As(err, &e) || (e.Status != 400 && e.Status != 413) || e.Message == "" {
				t.Fatalf("error %v is not a 400 or 413 API error", err)
			}
			return
		}
		if err := er.Check(); err != nil {
			t.Fatalf("accepted %+v, which Check refuses: %v", er, err)
		}
		again, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		req2, er2, err := openaiapi.DecodeEmbeddingRequest(strings.NewReader(string(again)))
		if err != nil || !reflect.DeepEqual(er, er2) || req2.EncodingFormat != req.EncodingFormat {
			t.Fatalf("round trip of %s: %+v, %v; want %+v", again, er2, err, er)
		}
	})
}
