package grammar

import (
	"fmt"
	"math"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Keywords understood. Every other keyword is refused by name: a grammar that
// quietly ignored a constraint would let the model write what the schema
// forbids.
var (
	// annotations constrain nothing and are skipped.
	annotations = set("title", "description", "default", "examples", "$comment", "$schema",
		"deprecated", "readOnly", "writeOnly")
	// containers hold definitions for $ref; each is read when referred to.
	containers     = set("$defs", "definitions")
	objectKeywords = set("properties", "required", "additionalProperties")
	arrayKeywords  = set("items", "minItems", "maxItems")
	stringKeywords = set("format", "minLength", "maxLength")
	otherKeywords  = set("type", "enum", "const", "anyOf", "$ref")
)

func set(ks ...string) map[string]bool {
	m := make(map[string]bool, len(ks))
	for _, k := range ks {
		m[k] = true
	}
	return m
}

var typeNames = set("object", "array", "string", "number", "integer", "boolean", "null")

// converter turns schemas into rules, after llama.cpp's SchemaConverter.
type converter struct {
	rules *ruleSet
	refs  map[string]string // ref key (document key + "#" + pointer) → its rule's name
	// edges are the $refs a rule may begin with (reached through $ref, anyOf or
	// a type list, never through an object's or array's opening bracket): a
	// cycle of them is left recursion, which llama.cpp refuses.
	edges map[string][]edge
}

type edge struct{ from, to, site string }

// doc is one schema document: $ref pointers resolve in it.
type doc struct {
	key  string // distinguishes the documents of one grammar (tool parameters)
	root *node
}

// at is where the converter is: the document, the schema's pointer in it, the
// $ref whose rule this schema begins (owner, "" once inside an object or
// array), and how deep it is.
type at struct {
	doc   *doc
	ptr   string
	owner string
	depth int
}

// in is the position of a sub-schema that begins the same rule.
func (x at) in(suffix string) at {
	x.ptr += suffix
	x.depth++
	return x
}

// inside is the position of a sub-schema behind a "{" or "[".
func (x at) inside(suffix string) at {
	x = x.in(suffix)
	x.owner = ""
	return x
}

func (x at) errorf(keyword, format string, args ...any) error {
	return &SchemaError{Pointer: x.ptr, Keyword: keyword, Reason: fmt.Sprintf(format, args...)}
}

// claim is a rule name reserved for the schema being visited.
type claim struct {
	name string
	ref  bool // a $ref's: released when the target is a builtin, which is used by its own name
}

func newConverter() *converter {
	return &converter{rules: newRuleSet(), refs: map[string]string{}, edges: map[string][]edge{}}
}

// document converts d's root schema into a rule: "root" when claimName is
// "root", otherwise a fresh name derived from claimName; name prefixes the
// names of its parts.
func (c *converter) document(d *doc, name, claimName string) (string, error) {
	cl := &claim{name: claimName}
	if claimName == "root" {
		c.rules.claimName("root")
	} else {
		cl.name = c.rules.claim(claimName)
	}
	key := d.key + "#"
	c.refs[key] = cl.name
	return c.visit(d.root, name, cl, at{doc: d, owner: key})
}

// finish checks the grammar as a whole and renders it.
func (c *converter) finish() (string, error) {
	if err := c.leftRecursion(); err != nil {
		return "", err
	}
	if c.rules.size > MaxGrammarBytes {
		return "", &SchemaError{Reason: fmt.Sprintf("the grammar would be over %d bytes", MaxGrammarBytes)}
	}
	for n, r := range c.rules.rules {
		if r == "" {
			panic("grammar: rule " + n + " claimed and never written")
		}
	}
	return c.rules.render(), nil
}

// define writes the rule of the schema being visited.
func (c *converter) define(name, content string, cl *claim) string {
	if cl != nil {
		c.rules.set(cl.name, content)
		return cl.name
	}
	return c.rules.add(name, content)
}

// builtin is the rule of a schema that is a builtin: the builtin itself,
// except that a document's start rule takes its content (as llama.cpp's
// converter writes "root ::= ..." for a schema of one type).
func (c *converter) builtin(prim string, cl *claim) string {
	if cl == nil || cl.ref {
		if cl != nil {
			delete(c.rules.rules, cl.name) // nothing refers to it: a builtin refers to nothing
			c.rules.size -= len(cl.name) + len(" ::= \n")
		}
		return c.rules.primitive(prim)
	}
	b := builtins[prim]
	for _, d := range b.deps {
		c.rules.primitive(d)
	}
	return c.define("", b.content, cl)
}

// visit adds the rules of schema n, found at x, and returns the name of the
// rule for it: under cl if given, otherwise derived from name.
func (c *converter) visit(n *node, name string, cl *claim, x at) (string, error) {
	if x.depth > MaxDepth {
		return "", x.errorf("", "schemas nest deeper than %d (counting each $ref)", MaxDepth)
	}
	if c.rules.size > MaxGrammarBytes {
		return "", x.errorf("", "the grammar would be over %d bytes", MaxGrammarBytes)
	}
	rn := ruleName(name)
	switch n.kind {
	case kindBool:
		if !n.b {
			return "", x.errorf("", "the schema false admits no value")
		}
		return c.define(rn, c.rules.primitive("value"), cl), nil
	case kindObject:
	default:
		return "", x.errorf("", "a schema is an object or a boolean, not %s", n.kind)
	}
	for i, k := range n.keys {
		if !annotations[k] && !containers[k] && !objectKeywords[k] && !arrayKeywords[k] &&
			!stringKeywords[k] && !otherKeywords[k] && !(k == "uniqueItems" && n.vals[i].kind == kindBool && !n.vals[i].b) {
			return "", x.errorf(k, "not supported")
		}
	}

	if r := n.get("$ref"); r != nil {
		if k := constraintBeside(n, "$ref"); k != "" {
			return "", x.errorf(k, `beside "$ref": not supported`)
		}
		target, err := c.ref(r, x)
		if err != nil {
			return "", err
		}
		return c.define(rn, target, cl), nil
	}

	if alts := n.get("anyOf"); alts != nil {
		if k := constraintBeside(n, "anyOf"); k != "" {
			return "", x.errorf(k, `beside "anyOf": not supported`)
		}
		if alts.kind != kindArray || len(alts.vals) == 0 {
			return "", x.errorf("anyOf", "not a non-empty array of schemas")
		}
		parts := make([]string, len(alts.vals))
		for i, a := range alts.vals {
			p, err := c.visit(a, alternative(name, i), nil, x.in("/anyOf/"+strconv.Itoa(i)))
			if err != nil {
				return "", err
			}
			parts[i] = p
		}
		return c.define(rn, strings.Join(parts, " | "), cl), nil
	}

	types, err := typesOf(n, x)
	if err != nil {
		return "", err
	}
	if n.get("enum") != nil || n.get("const") != nil {
		content, err := c.literals(n, types, x)
		if err != nil {
			return "", err
		}
		return c.define(rn, content, cl), nil
	}
	switch len(types) {
	case 0:
		t, err := inferType(n, x)
		if err != nil {
			return "", err
		}
		return c.visitType(n, t, name, cl, x)
	case 1:
		return c.visitType(n, types[0], name, cl, x)
	}
	parts := make([]string, len(types))
	for i, t := range types {
		p, err := c.visitType(n, t, alternative(name, i), nil, x)
		if err != nil {
			return "", err
		}
		parts[i] = p
	}
	return c.define(rn, strings.Join(parts, " | "), cl), nil
}

// alternative names the i-th choice of an anyOf or a type list.
func alternative(name string, i int) string {
	if name == "" {
		return "alternative-" + strconv.Itoa(i)
	}
	return name + "-" + strconv.Itoa(i)
}

// constraintBeside returns a keyword of n, other than kw, that constrains
// values: $ref and anyOf stand alone here rather than being combined.
func constraintBeside(n *node, kw string) string {
	for _, k := range n.keys {
		if k != kw && !annotations[k] && !containers[k] && k != "uniqueItems" {
			return k
		}
	}
	return ""
}

// typesOf returns the types "type" lists, nil when it is absent.
func typesOf(n *node, x at) ([]string, error) {
	t := n.get("type")
	if t == nil {
		return nil, nil
	}
	var names []*node
	switch t.kind {
	case kindString:
		names = []*node{t}
	case kindArray:
		if len(t.vals) == 0 {
			return nil, x.errorf("type", "an empty list")
		}
		names = t.vals
	default:
		return nil, x.errorf("type", "not a type name or a list of them")
	}
	var types []string
	for _, v := range names {
		if v.kind != kindString || !typeNames[v.text] {
			return nil, x.errorf("type", "%s is not a JSON Schema type", appendJSON(nil, v))
		}
		if slices.Contains(types, v.text) {
			return nil, x.errorf("type", "%q listed twice", v.text)
		}
		types = append(types, v.text)
	}
	return types, nil
}

// inferType is the type a schema without "type" stands for: the one its
// keywords apply to, "" (any value) when none do.
func inferType(n *node, x at) (string, error) {
	var found []string
	for _, k := range n.keys {
		var t string
		switch {
		case objectKeywords[k]:
			t = "object"
		case arrayKeywords[k]:
			t = "array"
		case stringKeywords[k]:
			t = "string"
		default:
			continue
		}
		if !slices.Contains(found, t) {
			found = append(found, t)
		}
		if len(found) > 1 {
			return "", x.errorf(k, `without "type", beside %s keywords: give "type"`, found[0])
		}
	}
	if len(found) == 0 {
		return "", nil
	}
	return found[0], nil
}

// literals is the rule content of an enum or const: the values as written,
// each checked against "type".
func (c *converter) literals(n *node, types []string, x at) (string, error) {
	kw := "enum"
	if n.get("const") != nil {
		kw = "const"
	}
	for _, k := range n.keys {
		if k != kw && k != "type" && !annotations[k] && !containers[k] {
			return "", x.errorf(k, "beside %q: not supported", kw)
		}
	}
	values := []*node{n.get("const")}
	if kw == "enum" {
		e := n.get("enum")
		if e.kind != kindArray || len(e.vals) == 0 {
			return "", x.errorf("enum", "not a non-empty array")
		}
		values = e.vals
	}
	lits := make([]string, len(values))
	for i, v := range values {
		if types != nil && !slices.ContainsFunc(types, func(t string) bool { return hasType(v, t) }) {
			return "", x.errorf(kw, "%s is not of type %s", appendJSON(nil, v), strings.Join(types, " or "))
		}
		lits[i] = literal(string(appendJSON(nil, v)))
	}
	if kw == "const" {
		return lits[0] + " space", nil
	}
	return "(" + strings.Join(lits, " | ") + ") space", nil
}

// hasType says whether v is an instance of JSON Schema type t.
func hasType(v *node, t string) bool {
	switch t {
	case "null":
		return v.kind == kindNull
	case "boolean":
		return v.kind == kindBool
	case "number":
		return v.kind == kindNumber
	case "integer":
		if v.kind != kindNumber {
			return false
		}
		f, err := strconv.ParseFloat(v.text, 64)
		return err == nil && f == math.Trunc(f)
	case "string":
		return v.kind == kindString
	case "array":
		return v.kind == kindArray
	}
	return v.kind == kindObject
}

// visitType adds the rules of n read as a schema of type t ("": any value).
func (c *converter) visitType(n *node, t, name string, cl *claim, x at) (string, error) {
	rn := ruleName(name)
	switch t {
	case "":
		return c.define(rn, c.rules.primitive("value"), cl), nil
	case "object":
		add := n.get("additionalProperties")
		if n.get("properties") == nil && (add == nil || add.kind == kindBool && add.b) {
			if req := n.get("required"); req != nil && (req.kind != kindArray || len(req.vals) > 0) {
				return "", x.errorf("required", `names properties that "properties" does not define`)
			}
			return c.define(rn, c.rules.primitive("object"), cl), nil
		}
		content, err := c.object(n, name, x)
		if err != nil {
			return "", err
		}
		return c.define(rn, content, cl), nil
	case "array":
		lo, hi, err := bounds(n, "minItems", "maxItems", x)
		if err != nil {
			return "", err
		}
		items := n.get("items")
		if items == nil && lo == 0 && hi < 0 {
			return c.builtin("array", cl), nil
		}
		item := "value"
		switch {
		case items == nil:
			c.rules.primitive("value")
		case items.kind == kindArray:
			return "", x.errorf("items", "a list of schemas (a tuple): not supported")
		default:
			if item, err = c.visit(items, child(name, "item"), nil, x.inside("/items")); err != nil {
				return "", err
			}
		}
		return c.define(rn, `"[" space `+repetition(item, lo, hi, `"," space`)+` "]" space`, cl), nil
	case "string":
		lo, hi, err := bounds(n, "minLength", "maxLength", x)
		if err != nil {
			return "", err
		}
		if f := n.get("format"); f != nil {
			if lo > 0 || hi >= 0 {
				return "", x.errorf("format", `beside "minLength" or "maxLength": not supported`)
			}
			if f.kind != kindString {
				return "", x.errorf("format", "not a string")
			}
			switch f.text {
			case "uuid":
				return c.builtin("uuid", cl), nil
			case "date", "time", "date-time":
				return c.define(rn, c.rules.primitive(f.text+"-string"), cl), nil
			}
			return "", x.errorf("format", "%q is not supported (date, time, date-time and uuid are)", f.text)
		}
		if lo == 0 && hi < 0 {
			return c.builtin("string", cl), nil
		}
		return c.define(rn, `"\"" `+repetition(c.rules.primitive("char"), lo, hi, "")+` "\"" space`, cl), nil
	}
	return c.builtin(t, cl), nil // number, integer, boolean, null
}

// bounds reads a pair like minItems/maxItems: lo ≥ 0, hi < 0 when absent.
func bounds(n *node, minKw, maxKw string, x at) (lo, hi int, err error) {
	read := func(kw string, absent int) (int, error) {
		v := n.get(kw)
		if v == nil {
			return absent, nil
		}
		i, err := strconv.Atoi(v.text)
		if v.kind != kindNumber || err != nil || i < 0 {
			return 0, x.errorf(kw, "not a non-negative integer")
		}
		if i > MaxRepeat {
			return 0, x.errorf(kw, "%d is above the limit of %d", i, MaxRepeat)
		}
		return i, nil
	}
	if lo, err = read(minKw, 0); err != nil {
		return 0, 0, err
	}
	if hi, err = read(maxKw, -1); err != nil {
		return 0, 0, err
	}
	if hi >= 0 && lo > hi {
		return 0, 0, x.errorf(minKw, "%d is above %s %d", lo, maxKw, hi)
	}
	return lo, hi, nil
}

// object is the rule content of an object schema with properties (or with
// additionalProperties false or a schema). Required properties come first,
// in the schema's order, then the optional ones, each in the schema's order
// after those before it, as llama.cpp's converter writes them.
//
// additionalProperties: absent or false, only the properties listed are
// written; true or a schema beside properties, likewise (a subset of what the
// schema allows); a schema without properties, any keys with values valid
// for it.
func (c *converter) object(n *node, name string, x at) (string, error) {
	props := n.get("properties")
	if props != nil && props.kind != kindObject {
		return "", x.errorf("properties", "not an object of schemas")
	}
	var keys []string
	var vals []*node
	if props != nil {
		keys, vals = props.keys, props.vals
	}
	required := map[string]bool{}
	if req := n.get("required"); req != nil {
		if req.kind != kindArray {
			return "", x.errorf("required", "not an array of property names")
		}
		for _, r := range req.vals {
			switch {
			case r.kind != kindString:
				return "", x.errorf("required", "not an array of property names")
			case required[r.text]:
				return "", x.errorf("required", "names %q twice", r.text)
			case !slices.Contains(keys, r.text):
				return "", x.errorf("required", `names %q, which "properties" does not define`, r.text)
			}
			required[r.text] = true
		}
	}
	add := n.get("additionalProperties")
	if add != nil && add.kind != kindBool && add.kind != kindObject {
		return "", x.errorf("additionalProperties", "not a boolean or a schema")
	}

	if props == nil && add != nil && add.kind == kindObject {
		sub := child(name, "additional")
		value, err := c.visit(add, sub+"-value", nil, x.inside("/additionalProperties"))
		if err != nil {
			return "", err
		}
		kv := c.rules.add(sub+"-kv", c.rules.primitive("string")+` ":" space `+value)
		return `"{" space  (` + kv + ` ( "," space ` + kv + ` )* )? "}" space`, nil
	}

	kvs := make([]string, len(keys))
	for i, k := range keys {
		pn := child(name, k)
		value, err := c.visit(vals[i], pn, nil, x.inside("/properties/"+escapePointer(k)))
		if err != nil {
			return "", err
		}
		kvs[i] = c.rules.add(pn+"-kv", literal(string(appendJSONString(nil, k)))+` space ":" space `+value)
	}
	var req []string
	var opt []int
	for i, k := range keys {
		if required[k] {
			req = append(req, kvs[i])
		} else {
			opt = append(opt, i)
		}
	}
	var b strings.Builder
	b.WriteString(`"{" space `)
	b.WriteString(strings.Join(req, ` "," space `))
	if len(opt) > 0 {
		// Any subset of the optional properties, in order: after the j-th,
		// the rule rest[j] offers each later one.
		rest := make([]string, len(opt))
		for j := len(opt) - 2; j >= 0; j-- {
			content := `( "," space ` + kvs[opt[j+1]] + ` )?`
			if j+1 < len(opt)-1 {
				content += " " + rest[j+1]
			}
			rest[j] = c.rules.add(child(name, keys[opt[j]])+"-rest", content)
		}
		alts := make([]string, len(opt))
		for j, i := range opt {
			alts[j] = kvs[i]
			if j < len(opt)-1 {
				alts[j] += " " + rest[j]
			}
		}
		b.WriteString(" (")
		if len(req) > 0 {
			b.WriteString(` "," space ( `)
		}
		b.WriteString(strings.Join(alts, " | "))
		if len(req) > 0 {
			b.WriteString(" )")
		}
		b.WriteString(" )?")
	}
	b.WriteString(` "}" space`)
	return b.String(), nil
}

// ref returns the rule name of the schema a $ref points to, converting it on
// first use. Only pointers into the same document ("#", "#/$defs/x", any
// "#/..." path) are followed; nothing is fetched.
func (c *converter) ref(r *node, x at) (string, error) {
	if r.kind != kindString {
		return "", x.errorf("$ref", "not a string")
	}
	if !strings.HasPrefix(r.text, "#") {
		return "", x.errorf("$ref", "%q is not a reference into this schema (#/...): nothing is fetched", r.text)
	}
	ptr, err := url.PathUnescape(r.text[1:])
	if err != nil {
		return "", x.errorf("$ref", "%q: %v", r.text, err)
	}
	key := x.doc.key + "#" + ptr
	if x.owner != "" {
		c.edges[x.owner] = append(c.edges[x.owner], edge{from: x.owner, to: key, site: x.ptr})
	}
	if name, ok := c.refs[key]; ok {
		return name, nil
	}
	target, ok := x.doc.root.at(ptr)
	if !ok {
		return "", x.errorf("$ref", "%q points at nothing", r.text)
	}
	base := ptr[strings.LastIndexByte(ptr, '/')+1:]
	base = strings.ReplaceAll(strings.ReplaceAll(base, "~1", "/"), "~0", "~")
	cl := &claim{name: c.rules.claim(base), ref: true}
	c.refs[key] = cl.name
	got, err := c.visit(target, base, cl, at{doc: x.doc, ptr: ptr, owner: key, depth: x.depth + 1})
	if err != nil {
		return "", err
	}
	c.refs[key] = got // a builtin's own name when the target is one
	return got, nil
}

// leftRecursion refuses a cycle of $refs that no object or array breaks
// ({"$ref": "#"}, or two definitions that are anyOf each other): the rule
// would call itself before reading a character.
func (c *converter) leftRecursion() error {
	const (
		unseen = iota
		open
		done
	)
	state := map[string]int{}
	var path []edge
	var walk func(k string) error
	walk = func(k string) error {
		state[k] = open
		for _, e := range c.edges[k] {
			switch state[e.to] {
			case open:
				i := slices.IndexFunc(path, func(p edge) bool { return p.from == e.to })
				cycle := append(slices.Clone(path[max(i, 0):]), e)
				names := make([]string, 0, len(cycle)+1)
				for _, p := range cycle {
					names = append(names, p.from[strings.IndexByte(p.from, '#'):])
				}
				names = append(names, e.to[strings.IndexByte(e.to, '#'):])
				return &SchemaError{Pointer: e.site, Keyword: "$ref",
					Reason: "a cycle of references with no object or array between (left recursion, which llama.cpp refuses): " + strings.Join(names, " → ")}
			case unseen:
				path = append(path, e)
				if err := walk(e.to); err != nil {
					return err
				}
				path = path[:len(path)-1]
			}
		}
		state[k] = done
		return nil
	}
	keys := make([]string, 0, len(c.edges))
	for k := range c.edges {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if state[k] == unseen {
			if err := walk(k); err != nil {
				return err
			}
		}
	}
	return nil
}
