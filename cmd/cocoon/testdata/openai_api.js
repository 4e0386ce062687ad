// Drives a node's gateway with the unmodified OpenAI JavaScript SDK through
// every part of the API the network serves beyond plain chat: tool calls
// (tool_choice required, created and streamed through the SDK's stream
// helper; a named function without parallel calls), a second turn with
// the tool's result, structured output through the SDK's parse helper,
// logprobs and a batch of embeddings. It prints one JSON object; the Go test
// checks it. Usage: node openai_api.js BASE_URL TOKEN (OPENAI_SDK: the SDK).
const mod = require(process.env.OPENAI_SDK);
const OpenAI = mod.default || mod.OpenAI || mod;

const weather = {
  type: "function",
  function: {
    name: "get_weather", description: "The weather in a city", strict: true,
    parameters: {
      type: "object", additionalProperties: false, required: ["city", "unit"],
      properties: { city: { type: "string", maxLength: 24 }, unit: { enum: ["c", "f"] } },
    },
  },
};
const ask = [{ role: "user", content: "What is the weather in Paris?" }];

(async () => {
  const client = new OpenAI({ baseURL: process.argv[2] + "/v1", apiKey: process.argv[3] });
  const out = { usages: [] };
  const spent = (u) => out.usages.push(u);

  const created = await client.chat.completions.create({
    model: "stories260K", messages: ask, tools: [weather], tool_choice: "required", max_tokens: 200, temperature: 0,
  });
  out.created = created.choices[0];
  spent(created.usage);

  const stream = client.chat.completions.stream({
    model: "stories260K", messages: ask, tools: [weather], tool_choice: "required",
    max_tokens: 200, temperature: 0.7, seed: 7, stream_options: { include_usage: true },
  });
  let pieces = 0;
  stream.on("chunk", (c) => { for (const ch of c.choices) pieces += (ch.delta.tool_calls || []).length; });
  const streamed = await stream.finalChatCompletion();
  out.streamed = streamed.choices[0];
  out.streamedPieces = pieces;
  spent(streamed.usage);

  const named = await client.chat.completions.create({
    model: "stories260K", messages: ask, tools: [weather], tool_choice: { type: "function", function: { name: "get_weather" } },
    max_tokens: 200, temperature: 0, parallel_tool_calls: false,
  });
  out.named = named.choices[0];
  spent(named.usage);

  const call = created.choices[0].message.tool_calls[0];
  const second = await client.chat.completions.create({
    model: "stories260K", tools: [weather], tool_choice: "none", max_tokens: 24, temperature: 0,
    messages: [...ask, created.choices[0].message, { role: "tool", tool_call_id: call.id, content: '{"temperature": 21, "sky": "clear"}' }],
  });
  out.second = second.choices[0];
  spent(second.usage);

  const parsed = await client.chat.completions.parse({
    model: "stories260K", messages: [{ role: "user", content: "Pick a color" }], max_tokens: 200, temperature: 0,
    response_format: { type: "json_schema", json_schema: { name: "pick", strict: true, schema: {
      type: "object", properties: { ok: { type: "boolean" }, color: { enum: ["red", "green", "blue"] } },
      required: ["ok", "color"], additionalProperties: false } } },
  });
  out.parsed = parsed.choices[0].message.parsed;
  out.parsedContent = parsed.choices[0].message.content;
  spent(parsed.usage);

  const lp = await client.chat.completions.create({
    model: "stories260K", messages: [{ role: "user", content: "Once upon a time" }], max_tokens: 12, temperature: 0,
    logprobs: true, top_logprobs: 3,
  });
  out.logprobs = lp.choices[0].logprobs;
  out.logprobsText = lp.choices[0].message.content;
  spent(lp.usage);

  // The SDK asks for base64 and decodes it to floats.
  const emb = await client.embeddings.create({ model: "stories260K", input: ["Lily had a red ball.", "The sun was hot.", "Lily had a red ball."] });
  out.embeddings = emb.data.map((d) => ({ index: d.index, embedding: Array.from(d.embedding) }));
  spent(emb.usage);

  console.log(JSON.stringify(out));
})().catch((e) => { console.error(String(e && e.stack || e)); process.exit(1); });
