// Package grammar turns JSON Schemas into GBNF grammars for llama.cpp's
// grammar sampler, so that the embedded backend can guarantee the shape of
// what a model writes: OpenAI's response_format json_object and json_schema,
// and tool calls when tool_choice forces one. runtime/llamacpp imports it and
// hands the grammar to llama_sampler_init_grammar (yzma's SamplerInitGrammar)
// with start rule "root"; an upstream backend (vLLM, llama-server) is given
// the schema itself and does not need it. runtime's Request.Check converts a
// response format's schema as its check, so that every edge (gateway, worker,
// runner) refuses, naming the keyword, what no backend could follow. It imports the standard library
// only.
//
// The conversion follows llama.cpp's own converter
// (examples/json_schema_to_grammar.py, common/json-schema-to-grammar.cpp):
// the same builtin rules (bounded numbers, a whitespace rule that cannot run
// away), the same rule names, the same object layout (required properties in
// the schema's order, then any subset of the optional ones in order), so for
// most schemas both accept the grammars are the same text (testdata holds
// both kinds, and grammar_test.go names the differences). Unlike it, this
// package refuses what it cannot follow rather than ignoring it, never
// fetches, escapes every literal, and checks references for left recursion.
//
// What a schema may say (OpenAI's strict mode, and a little more):
//
//	type             a name or a list of them; a list is a choice
//	                 ("type": ["string", "null"])
//	enum, const      any JSON values, checked against "type"
//	object           properties, required (each one defined in properties);
//	                 additionalProperties false or absent: only the listed
//	                 properties; true or a schema beside properties: likewise
//	                 (a subset of what the schema allows); a schema with no
//	                 properties: a map of values valid for it. An object with
//	                 neither is any object.
//	array            items (one schema), minItems, maxItems
//	string           minLength, maxLength (counted in JSON characters: an
//	                 escape is one); format date, time, date-time, uuid
//	number, integer, boolean, null
//	anyOf            a choice (alone, beside annotations)
//	$ref             "#" or "#/..." pointers into the same document ($defs,
//	                 definitions or anywhere); recursion is allowed when an
//	                 object or array lies on the way round
//	true             any value, as is a schema with no constraint ({})
//	annotations      title, description, default, examples, $comment,
//	                 $schema, deprecated, readOnly, writeOnly: skipped
//	uniqueItems      false only
//
// Every other keyword is refused with a *SchemaError that names it and the
// JSON pointer of the schema holding it: among them pattern,
// patternProperties, propertyNames, allOf, oneOf, not, if/then/else,
// dependentRequired, dependentSchemas, prefixItems and tuple items, contains,
// uniqueItems true, minProperties, maxProperties, minimum, maximum,
// exclusiveMinimum, exclusiveMaximum, multipleOf, other formats, $id,
// $anchor, $dynamicRef, remote $refs. A schema is untrusted input: its size
// (MaxSchemaBytes), JSON nesting (MaxNesting), schema depth through $refs
// (MaxDepth), repetition counts (MaxRepeat) and the grammar written
// (MaxGrammarBytes) are bounded.
//
// A schema whose recursion has no way out (a required property that refers
// back to its own object) is accepted and makes a grammar no finite JSON
// satisfies: the model writes until max_tokens.
package grammar
