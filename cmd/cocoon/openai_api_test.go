package main

import (
	"bytes"
	"encoding/json"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/testnet"
)

// apiUsage is an answer's usage as the SDKs hand it back.
type apiUsage struct {
	PromptTokens     int     `json:"prompt_tokens"`
	CompletionTokens int     `json:"completion_tokens"`
	CostNanoTON      *uint64 `json:"cost_nanoton"`
}

// weatherArgs are get_weather's arguments: both required, nothing else.
type weatherArgs struct {
	City *string `json:"city"`
	Unit *string `json:"unit"`
}

// checkWeatherArgs holds a tool call's arguments to the function's schema.
func checkWeatherArgs(t *testing.T, what, args string) {
	t.Helper()
	var a weatherArgs
	dec := json.NewDecoder(strings.NewReader(args))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil || a.City == nil || a.Unit == nil || len(*a.City) > 24 || !slices.Contains([]string{"c", "f"}, *a.Unit) {
		t.Fatalf("%s: arguments %q (%v) are not valid for get_weather's schema", what, args, err)
	}
}

// runNode runs a Node.js script against the client node and decodes what it
// prints into v; the node's log is shown when it fails.
func runNode(t *testing.T, c *testnet.Cluster, script string, env []string, v any) {
	t.Helper()
	client := c.Nodes[0]
	js := exec.Command("node", script, client.URL, client.Token)
	js.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	js.Stderr = &stderr
	out, err := js.Output()
	if err != nil {
		log, _ := os.ReadFile(client.Log)
		t.Fatalf("%s: %v\n%s\nclient node log (tail):\n%s", filepath.Base(script), err, stderr.Bytes(), tail(log, 4000))
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("%s printed %q: %v", filepath.Base(script), out, err)
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// TestNetworkWholeOpenAIAPI runs real processes on 127.0.0.1 with the
// default configuration of `cocoon testnet` (a devledger, two workers serving
// the shared model on the embedded backend, a client node), and drives the
// client's gateway with two unmodified SDKs:
//
//   - the openai npm SDK: tool calls forced by tool_choice "required",
//     created and streamed (the SDK's stream helper assembles the call), and
//     by a named function with parallel_tool_calls false, whose arguments
//     parse and validate against the function's schema; a second turn with the tool's result; json_schema with strict
//     through the SDK's parse helper; logprobs with top_logprobs; a batch of
//     embeddings of the model's dimension (base64 on the wire, as the SDK
//     asks);
//   - the Vercel AI SDK's OpenAI-compatible provider: generateObject with a
//     zod schema and generateText with a tool the model must call;
//   - plain HTTP: an image (no worker declares image input), an https image
//     URL and embeddings' dimensions are refused with a 400 naming the field.
//
// Then the money: what the workers can claim equals what the client paid
// equals the sum of what every answer said it cost, to the nanoTON.
func TestNetworkWholeOpenAIAPI(t *testing.T) {
	sdk := depPath(t, "COCOON_OPENAI_SDK", "openai-sdk/node_modules/openai", "the OpenAI SDK")
	aisdk := depPath(t, "COCOON_AI_SDK", "ai-sdk/node_modules", "the Vercel AI SDK")
	c := startTestnet(t, 3, 2)
	price := market.Price{Prompt: uint64(testnet.LaunchPrice.Prompt), Completion: uint64(testnet.LaunchPrice.Completion)}
	var spent uint64
	cost := func(what string, u apiUsage) {
		t.Helper()
		want, err := market.Cost(price, uint64(u.PromptTokens), uint64(u.CompletionTokens))
		if err != nil || u.CostNanoTON == nil || *u.CostNanoTON != want {
			t.Fatalf("%s: usage %+v; the price times the tokens is %d (%v)", what, u, want, err)
		}
		spent += want
	}

	type toolCall struct {
		ID       string `json:"id"`
		Type     string `json:"type"`
		Function struct {
			Name      string `json:"name"`
			Arguments string `json:"arguments"`
		} `json:"function"`
	}
	type choice struct {
		FinishReason string `json:"finish_reason"`
		Message      struct {
			Content   *string    `json:"content"`
			ToolCalls []toolCall `json:"tool_calls"`
		} `json:"message"`
	}
	var res struct {
		Usages         []apiUsage
		Created        choice
		Streamed       choice
		StreamedPieces int
		Named          choice
		Second         choice
		Parsed         *struct {
			OK    *bool   `json:"ok"`
			Color *string `json:"color"`
		}
		ParsedContent string
		Logprobs      struct {
			Content []struct {
				Token       string  `json:"token"`
				Logprob     float64 `json:"logprob"`
				Bytes       []int   `json:"bytes"`
				TopLogprobs []struct {
					Token   string  `json:"token"`
					Logprob float64 `json:"logprob"`
				} `json:"top_logprobs"`
			} `json:"content"`
		}
		LogprobsText string
		Embeddings   []struct {
			Index     int       `json:"index"`
			Embedding []float64 `json:"embedding"`
		}
	}
	runNode(t, c, filepath.Join("testdata", "openai_api.js"), []string{"OPENAI_SDK=" + sdk}, &res)

	for what, ch := range map[string]choice{"created (required)": res.Created, "streamed (required)": res.Streamed, "named function": res.Named} {
		if ch.FinishReason != "tool_calls" || len(ch.Message.ToolCalls) != 1 {
			t.Fatalf("%s: finish %q, %d tool calls; want one call and finish tool_calls", what, ch.FinishReason, len(ch.Message.ToolCalls))
		}
		call := ch.Message.ToolCalls[0]
		if call.Type != "function" || call.Function.Name != "get_weather" || !strings.HasPrefix(call.ID, "call_") {
			t.Fatalf("%s: call %+v", what, call)
		}
		checkWeatherArgs(t, what, call.Function.Arguments)
		t.Logf("SDK %s: get_weather(%s)", what, call.Function.Arguments)
	}
	if res.StreamedPieces < 2 {
		t.Errorf("the streamed call came in %d pieces; want the arguments streamed after the name", res.StreamedPieces)
	}
	if res.Second.Message.Content == nil || *res.Second.Message.Content == "" || len(res.Second.Message.ToolCalls) != 0 {
		t.Fatalf("second turn with the tool's result: %+v", res.Second)
	}
	if p := res.Parsed; p == nil || p.OK == nil || p.Color == nil || !slices.Contains([]string{"red", "green", "blue"}, *p.Color) {
		t.Fatalf("parse helper: %q parsed to %+v", res.ParsedContent, p)
	}
	lp := res.Logprobs.Content
	if len(lp) == 0 || res.Usages[5].CompletionTokens < len(lp) {
		t.Fatalf("logprobs: %d entries for %d completion tokens", len(lp), res.Usages[5].CompletionTokens)
	}
	var joined []byte
	for i, e := range lp {
		if !(e.Logprob <= 0) || len(e.TopLogprobs) != 3 || e.TopLogprobs[0].Logprob < e.TopLogprobs[2].Logprob ||
			math.Abs(e.Logprob-e.TopLogprobs[0].Logprob) > 1e-6 { // greedy: the sampled token is the likeliest
			t.Fatalf("logprobs[%d] = %+v", i, e)
		}
		for _, b := range e.Bytes {
			joined = append(joined, byte(b))
		}
	}
	if !strings.HasPrefix(res.LogprobsText, string(joined)) || len(joined) == 0 {
		t.Errorf("the logprobs' bytes %q do not spell the answer %q", joined, res.LogprobsText)
	}
	if e := res.Embeddings; len(e) != 3 || len(e[0].Embedding) != 64 || !slices.Equal(e[0].Embedding, e[2].Embedding) ||
		slices.Equal(e[0].Embedding, e[1].Embedding) || e[1].Index != 1 {
		t.Fatalf("embeddings: %d vectors (first of %d); want 3 of 64, the same text giving the same vector", len(e), len(e[0].Embedding))
	}
	var norm float64
	for _, x := range res.Embeddings[1].Embedding {
		norm += x * x
	}
	if math.Abs(norm-1) > 1e-3 {
		t.Errorf("embedding 1 has squared norm %g; want unit vectors", norm)
	}
	if emb := res.Usages[6]; emb.PromptTokens == 0 || emb.CompletionTokens != 0 {
		t.Errorf("embeddings usage %+v", emb)
	}
	names := []string{"created", "streamed", "named", "second turn", "parse", "logprobs", "embeddings"}
	for i, u := range res.Usages {
		cost("openai SDK "+names[i], u)
	}

	var ai struct {
		Usages []apiUsage
		Object *struct {
			OK    *bool   `json:"ok"`
			Color *string `json:"color"`
		}
		ToolCalls []struct {
			Name  string          `json:"name"`
			Input json.RawMessage `json:"input"`
		}
		Executed     []json.RawMessage
		FinishReason string
	}
	runNode(t, c, filepath.Join("testdata", "ai_sdk.js"), []string{"AI_SDK=" + aisdk}, &ai)
	if o := ai.Object; o == nil || o.OK == nil || o.Color == nil || !slices.Contains([]string{"red", "green", "blue"}, *o.Color) {
		t.Fatalf("generateObject: %+v", o)
	}
	if len(ai.ToolCalls) != 1 || ai.ToolCalls[0].Name != "get_weather" || len(ai.Executed) != 1 || ai.FinishReason != "tool-calls" {
		t.Fatalf("generateText with a tool: calls %+v, executed %d, finish %q", ai.ToolCalls, len(ai.Executed), ai.FinishReason)
	}
	checkWeatherArgs(t, "AI SDK tool call", string(ai.Executed[0]))
	t.Logf("AI SDK: object %s %v; get_weather(%s)", *ai.Object.Color, *ai.Object.OK, ai.Executed[0])
	for i, u := range ai.Usages {
		cost([]string{"AI SDK generateObject", "AI SDK generateText"}[i], u)
	}

	// Each worker's ad says where it runs the model: the embedded engine's
	// CPU build here, with the model's layers and none on a GPU.
	req, _ := http.NewRequest("GET", c.Nodes[0].URL+"/api/v0/overview", nil)
	req.Header.Set("Authorization", "Bearer "+c.Nodes[0].Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var ov struct {
		Ads []struct {
			Models []struct {
				Llama     string `json:"llama"`
				Layers    uint32 `json:"layers"`
				GPULayers uint32 `json:"gpu_layers"`
			} `json:"models"`
		} `json:"ads"`
	}
	err = json.NewDecoder(resp.Body).Decode(&ov)
	resp.Body.Close()
	if err != nil || len(ov.Ads) != 2 {
		t.Fatalf("overview: %d ads (%v)", len(ov.Ads), err)
	}
	for _, a := range ov.Ads {
		if m := a.Models[0]; m.Llama != "cpu" || m.Layers == 0 || m.GPULayers != 0 {
			t.Errorf("an ad says the model runs on %+v; want the cpu build with its layers", m)
		}
	}

	// What no worker offers is refused by name, before any worker sees it.
	for _, r := range []struct{ body, param, says string }{
		{`{"model":"stories260K","messages":[{"role":"user","content":[{"type":"text","text":"What is this?"},` +
			`{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}}]}]}`, "messages[0].content", "image"},
		{`{"model":"stories260K","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://example.com/a.png"}}]}]}`,
			"messages[0].content[0].image_url.url", "data:"},
		{`{"model":"stories260K","input":"x","dimensions":32}`, "dimensions", "dimensions"},
	} {
		path := "/v1/chat/completions"
		if strings.Contains(r.body, `"input"`) {
			path = "/v1/embeddings"
		}
		req, _ := http.NewRequest("POST", c.Nodes[0].URL+path, strings.NewReader(r.body))
		req.Header.Set("Authorization", "Bearer "+c.Nodes[0].Token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e struct {
			Error struct {
				Message string  `json:"message"`
				Param   *string `json:"param"`
			} `json:"error"`
		}
		err = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != 400 || err != nil || e.Error.Param == nil || *e.Error.Param != r.param || !strings.Contains(e.Error.Message, r.says) {
			t.Errorf("POST %s %s: %d %+v; want 400 naming %s", path, r.body, resp.StatusCode, e.Error, r.param)
		}
	}

	checkBooks(t, c, spent)
}
