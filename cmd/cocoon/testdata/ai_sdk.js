// Drives a node's gateway with the Vercel AI SDK's OpenAI-compatible
// provider: generateObject with a zod schema (sent as a json_schema
// response_format) and generateText with a tool the model must call, whose
// execute runs on the parsed arguments. It prints one JSON object; the Go
// test checks it. Usage: node ai_sdk.js BASE_URL TOKEN (AI_SDK: node_modules).
const path = require("path");
const need = (m) => require(path.join(process.env.AI_SDK, m));
const { generateObject, generateText, tool } = need("ai");
const { createOpenAICompatible } = need("@ai-sdk/openai-compatible");
const { z } = need("zod");

(async () => {
  const cocoon = createOpenAICompatible({
    name: "cocoon", baseURL: process.argv[2] + "/v1", apiKey: process.argv[3],
    supportsStructuredOutputs: true, includeUsage: true,
  });
  const model = cocoon("stories260K");
  const out = { usages: [] };

  const obj = await generateObject({
    model, schema: z.object({ ok: z.boolean(), color: z.enum(["red", "green", "blue"]) }),
    prompt: "Pick a color", maxOutputTokens: 200, temperature: 0,
  });
  out.object = obj.object;
  out.usages.push(obj.response.body && obj.response.body.usage);

  const calls = [];
  const txt = await generateText({
    model, prompt: "What is the weather in Paris?", maxOutputTokens: 200, temperature: 0, toolChoice: "required",
    tools: {
      get_weather: tool({
        description: "The weather in a city",
        inputSchema: z.object({ city: z.string().max(24), unit: z.enum(["c", "f"]) }),
        execute: async (input) => { calls.push(input); return { temperature: 21 }; },
      }),
    },
  });
  out.toolCalls = txt.toolCalls.map((c) => ({ name: c.toolName, input: c.input }));
  out.executed = calls;
  out.finishReason = txt.finishReason;
  out.usages.push(txt.response.body && txt.response.body.usage);
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(String(e && e.stack || e)); process.exit(1); });
