package grammar

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// The building blocks, as llama.cpp's converter (examples/json_schema_to_grammar.py,
// common/json-schema-to-grammar.cpp) writes them, so that a grammar from here
// reads like one from llama-server. Numbers are bounded to 16 digits and
// whitespace to one newline and 20 indents: an unbounded run is where a small
// model gets stuck.
const spaceRule = `| " " | "\n" [ \t]{0,20}`

type builtin struct {
	content string
	deps    []string
}

var builtins = map[string]builtin{
	"boolean":       {`("true" | "false") space`, nil},
	"decimal-part":  {`[0-9]{1,16}`, nil},
	"integral-part": {`[0] | [1-9] [0-9]{0,15}`, nil},
	"number":        {`("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)? space`, []string{"integral-part", "decimal-part"}},
	"integer":       {`("-"? integral-part) space`, []string{"integral-part"}},
	"value":         {`object | array | string | number | boolean | null`, []string{"object", "array", "string", "number", "boolean", "null"}},
	"object":        {`"{" space ( string ":" space value ("," space string ":" space value)* )? "}" space`, []string{"string", "value"}},
	"array":         {`"[" space ( value ("," space value)* )? "]" space`, []string{"value"}},
	"uuid":          {`"\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12} "\"" space`, nil},
	"char":          {`[^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})`, nil},
	"string":        {`"\"" char* "\"" space`, []string{"char"}},
	"null":          {`"null" space`, nil},

	// String formats (RFC 3339 shapes; a date's day is not checked against its month).
	"date":             {`[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )`, nil},
	"time":             {`([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? ( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )`, nil},
	"date-time":        {`date "T" time`, []string{"date", "time"}},
	"date-string":      {`"\"" date "\"" space`, []string{"date"}},
	"time-string":      {`"\"" time "\"" space`, []string{"time"}},
	"date-time-string": {`"\"" date-time "\"" space`, []string{"date-time"}},
}

// isReserved says whether a rule name belongs to the converter: names derived
// from a schema that equal one get a "-" appended.
func isReserved(name string) bool {
	_, ok := builtins[name]
	return ok || name == "root" || name == "space" || name == "dot"
}

// ruleSet is the grammar under construction: rule name → right-hand side.
// An empty right-hand side marks a name claimed for a rule still being built.
type ruleSet struct {
	rules map[string]string
	size  int // bytes the rendered grammar will take
}

func newRuleSet() *ruleSet {
	return &ruleSet{rules: map[string]string{"space": spaceRule}, size: len("space ::= \n") + len(spaceRule)}
}

// taken says whether name cannot be given to a rule reading content.
func (rs *ruleSet) taken(name, content string) bool {
	if cur, ok := rs.rules[name]; ok {
		return cur != content
	}
	if isReserved(name) {
		b, ok := builtins[name]
		return !ok || b.content != content
	}
	return false
}

// add adds a rule under name (made a valid rule name), or under name0,
// name1, ... when name holds another rule; a rule identical to an existing
// one of that name is shared. It returns the name used.
func (rs *ruleSet) add(name, content string) string {
	key := sanitize(name)
	if rs.taken(key, content) {
		for i := 0; ; i++ {
			if k := key + strconv.Itoa(i); !rs.taken(k, content) {
				key = k
				break
			}
		}
	}
	rs.set(key, content)
	return key
}

// claimName reserves name itself (the start rule), content to come.
func (rs *ruleSet) claimName(name string) {
	if _, ok := rs.rules[name]; !ok {
		rs.size += len(name) + len(" ::= \n")
	}
	rs.rules[name] = ""
}

// claim reserves a fresh name derived from base for a rule whose content is
// set later (a $ref's target, which may refer to itself).
func (rs *ruleSet) claim(base string) string {
	key := ruleName(child("", base))
	used := func(k string) bool { _, ok := rs.rules[k]; return ok || isReserved(k) }
	if used(key) {
		for i := 0; ; i++ {
			if k := key + strconv.Itoa(i); !used(k) {
				key = k
				break
			}
		}
	}
	rs.rules[key] = ""
	rs.size += len(key) + len(" ::= \n")
	return key
}

func (rs *ruleSet) set(name, content string) {
	if cur, ok := rs.rules[name]; ok {
		if cur == content {
			return
		}
		rs.size -= len(cur)
	} else {
		rs.size += len(name) + len(" ::= \n")
	}
	rs.size += len(content)
	rs.rules[name] = content
}

// primitive adds a builtin rule and those it refers to; it returns its name.
func (rs *ruleSet) primitive(name string) string {
	b := builtins[name]
	n := rs.add(name, b.content)
	for _, d := range b.deps {
		if _, ok := rs.rules[d]; !ok {
			rs.primitive(d)
		}
	}
	return n
}

// render writes the rules sorted by name, one per line, as llama.cpp's
// converter does.
func (rs *ruleSet) render() string {
	names := make([]string, 0, len(rs.rules))
	for n := range rs.rules {
		names = append(names, n)
	}
	slices.Sort(names)
	var b strings.Builder
	b.Grow(rs.size)
	for _, n := range names {
		b.WriteString(n)
		b.WriteString(" ::= ")
		b.WriteString(rs.rules[n])
		b.WriteByte('\n')
	}
	return b.String()
}

// ruleName is the name a schema node at name gets: "root" for the root,
// names made valid, converter names suffixed with "-".
func ruleName(name string) string {
	if name == "" {
		return "root"
	}
	s := sanitize(name)
	if isReserved(s) {
		s += "-"
	}
	return s
}

// child is the name of a part of the node named name.
func child(name, part string) string {
	switch {
	case name == "" && part == "":
		return "-"
	case name == "":
		return part
	}
	return name + "-" + part
}

// sanitize makes s a GBNF rule name: each run of characters other than
// [a-zA-Z0-9-] becomes one "-".
func sanitize(s string) string {
	var b strings.Builder
	run := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' {
			b.WriteByte(c)
			run = false
		} else if !run {
			b.WriteByte('-')
			run = true
		}
	}
	if b.Len() == 0 {
		return "-"
	}
	return b.String()
}

// literal is s as a GBNF string literal.
func literal(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7F:
			fmt.Fprintf(&b, `\x%02X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// repetition is item repeated min to max times (max < 0: no bound), with sep
// between items, written as llama.cpp's converter writes it.
// A maximum of 0 is the empty sequence.
func repetition(item string, lo, hi int, sep string) string {
	switch {
	case hi == 0:
		return ""
	case lo == 0 && hi == 1:
		return item + "?"
	}
	if sep == "" {
		switch {
		case lo == 1 && hi < 0:
			return item + "+"
		case lo == 0 && hi < 0:
			return item + "*"
		case hi < 0:
			return fmt.Sprintf("%s{%d,}", item, lo)
		}
		return fmt.Sprintf("%s{%d,%d}", item, lo, hi)
	}
	restHi := -1
	if hi > 0 {
		restHi = hi - 1
	}
	res := item
	if more := repetition("("+sep+" "+item+")", max(lo-1, 0), restHi, ""); more != "" {
		res += " " + more
	}
	if lo == 0 {
		return "(" + res + ")?"
	}
	return res
}
