package grammar

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// A GBNF reader and recognizer for the subset this package writes, so that
// tests can check what a grammar accepts without llama.cpp (runtime/llamacpp's
// tests check that llama.cpp parses the same grammars). It follows
// llama.cpp's grammar parser: literals and classes over code points, escapes
// \" \\ \n \r \t \xHH \uHHHH, postfix * + ? {m} {m,} {m,n}.

type gbnf struct {
	rules map[string]alts
	memo  map[refAt][]int
	busy  map[refAt]bool
	// leftRecursive is set when a rule is re-entered at the position it
	// started from: llama.cpp refuses such grammars.
	leftRecursive bool
}

type refAt struct {
	rule string
	pos  int
}

type alts []seq

type seq []item

type item struct {
	lit     []rune // literal
	class   *class
	ref     string
	group   alts
	isGroup bool
	min     int
	max     int // -1: unbounded
}

type class struct {
	neg    bool
	ranges [][2]rune
}

func parseGBNF(text string) (*gbnf, error) {
	g := &gbnf{rules: map[string]alts{}}
	var refs []string
	for _, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		name, rhs, ok := strings.Cut(line, " ::= ")
		if !ok || name == "" || sanitize(name) != name {
			return nil, fmt.Errorf("line %q: want `name ::= rule`", line)
		}
		if _, dup := g.rules[name]; dup {
			return nil, fmt.Errorf("rule %s defined twice", name)
		}
		p := &gbnfParser{in: []rune(rhs)}
		a, err := p.alternates()
		if err == nil && p.pos < len(p.in) {
			err = fmt.Errorf("unexpected %q", string(p.in[p.pos:]))
		}
		if err != nil {
			return nil, fmt.Errorf("rule %s: %v", name, err)
		}
		g.rules[name] = a
		refs = append(refs, p.refs...)
	}
	if _, ok := g.rules["root"]; !ok {
		return nil, fmt.Errorf("no root rule")
	}
	for _, r := range refs {
		if _, ok := g.rules[r]; !ok {
			return nil, fmt.Errorf("rule %s is referred to and not defined", r)
		}
	}
	return g, nil
}

type gbnfParser struct {
	in   []rune
	pos  int
	refs []string
}

func (p *gbnfParser) skipSpace() {
	for p.pos < len(p.in) && p.in[p.pos] == ' ' {
		p.pos++
	}
}

func (p *gbnfParser) alternates() (alts, error) {
	var a alts
	for {
		s, err := p.sequence()
		if err != nil {
			return nil, err
		}
		a = append(a, s)
		p.skipSpace()
		if p.pos < len(p.in) && p.in[p.pos] == '|' {
			p.pos++
			continue
		}
		return a, nil
	}
}

func (p *gbnfParser) sequence() (seq, error) {
	var s seq
	for {
		p.skipSpace()
		if p.pos >= len(p.in) {
			return s, nil
		}
		c := p.in[p.pos]
		var it item
		switch {
		case c == '|' || c == ')':
			return s, nil
		case c == '"':
			p.pos++
			for p.pos < len(p.in) && p.in[p.pos] != '"' {
				r, err := p.char()
				if err != nil {
					return nil, err
				}
				it.lit = append(it.lit, r)
			}
			if p.pos >= len(p.in) {
				return nil, fmt.Errorf("unterminated literal")
			}
			p.pos++
		case c == '[':
			p.pos++
			it.class = &class{}
			if p.pos < len(p.in) && p.in[p.pos] == '^' {
				it.class.neg = true
				p.pos++
			}
			for p.pos < len(p.in) && p.in[p.pos] != ']' {
				lo, err := p.char()
				if err != nil {
					return nil, err
				}
				hi := lo
				if p.pos+1 < len(p.in) && p.in[p.pos] == '-' && p.in[p.pos+1] != ']' {
					p.pos++
					if hi, err = p.char(); err != nil {
						return nil, err
					}
				}
				it.class.ranges = append(it.class.ranges, [2]rune{lo, hi})
			}
			if p.pos >= len(p.in) {
				return nil, fmt.Errorf("unterminated class")
			}
			p.pos++
		case c == '(':
			p.pos++
			g, err := p.alternates()
			if err != nil {
				return nil, err
			}
			if p.pos >= len(p.in) || p.in[p.pos] != ')' {
				return nil, fmt.Errorf("missing )")
			}
			p.pos++
			it.group, it.isGroup = g, true
		case sanitize(string(c)) == string(c):
			start := p.pos
			for p.pos < len(p.in) && p.in[p.pos] < 128 && sanitize(string(p.in[p.pos])) == string(p.in[p.pos]) {
				p.pos++
			}
			it.ref = string(p.in[start:p.pos])
			p.refs = append(p.refs, it.ref)
		default:
			return nil, fmt.Errorf("unexpected %q", c)
		}
		it.min, it.max = 1, 1
		if p.pos < len(p.in) {
			switch p.in[p.pos] {
			case '*':
				it.min, it.max = 0, -1
				p.pos++
			case '+':
				it.min, it.max = 1, -1
				p.pos++
			case '?':
				it.min, it.max = 0, 1
				p.pos++
			case '{':
				end := slices.Index(p.in[p.pos:], '}')
				if end < 0 {
					return nil, fmt.Errorf("unterminated {")
				}
				body := string(p.in[p.pos+1 : p.pos+end])
				p.pos += end + 1
				lo, hi, comma := strings.Cut(body, ",")
				var err error
				if it.min, err = strconv.Atoi(lo); err != nil {
					return nil, fmt.Errorf("repetition {%s}", body)
				}
				it.max = it.min
				if comma {
					it.max = -1
					if hi != "" {
						if it.max, err = strconv.Atoi(hi); err != nil || it.max < it.min {
							return nil, fmt.Errorf("repetition {%s}", body)
						}
					}
				}
			}
		}
		s = append(s, it)
	}
}

// char reads one possibly escaped character of a literal or class.
func (p *gbnfParser) char() (rune, error) {
	c := p.in[p.pos]
	p.pos++
	if c != '\\' {
		return c, nil
	}
	if p.pos >= len(p.in) {
		return 0, fmt.Errorf("dangling \\")
	}
	e := p.in[p.pos]
	p.pos++
	n := 0
	switch e {
	case 'n':
		return '\n', nil
	case 'r':
		return '\r', nil
	case 't':
		return '\t', nil
	case '"', '\\', '[', ']', '-':
		return e, nil
	case 'x':
		n = 2
	case 'u':
		n = 4
	default:
		return 0, fmt.Errorf("unknown escape \\%c", e)
	}
	if p.pos+n > len(p.in) {
		return 0, fmt.Errorf("short \\%c escape", e)
	}
	v, err := strconv.ParseUint(string(p.in[p.pos:p.pos+n]), 16, 32)
	if err != nil {
		return 0, fmt.Errorf("bad \\%c escape", e)
	}
	p.pos += n
	return rune(v), nil
}

// accepts says whether the grammar's root derives s.
func (g *gbnf) accepts(s string) bool {
	in := []rune(s)
	g.memo, g.busy = map[refAt][]int{}, map[refAt]bool{}
	return slices.Contains(g.matchRule("root", in, 0), len(in))
}

func (g *gbnf) matchRule(name string, in []rune, pos int) []int {
	k := refAt{name, pos}
	if ends, ok := g.memo[k]; ok {
		return ends
	}
	if g.busy[k] {
		g.leftRecursive = true
		return nil
	}
	g.busy[k] = true
	ends := g.matchAlts(g.rules[name], in, pos)
	delete(g.busy, k)
	g.memo[k] = ends
	return ends
}

func (g *gbnf) matchAlts(a alts, in []rune, pos int) []int {
	var ends []int
	for _, s := range a {
		ends = union(ends, g.matchSeq(s, in, pos))
	}
	return ends
}

func (g *gbnf) matchSeq(s seq, in []rune, pos int) []int {
	cur := []int{pos}
	for _, it := range s {
		var next []int
		for _, p := range cur {
			next = union(next, g.matchItem(it, in, p))
		}
		if cur = next; len(cur) == 0 {
			return nil
		}
	}
	return cur
}

func (g *gbnf) matchItem(it item, in []rune, pos int) []int {
	var ends []int
	if it.min == 0 {
		ends = []int{pos}
	}
	cur := []int{pos}
	seen := map[int]bool{}
	for n := 1; it.max < 0 || n <= it.max; n++ {
		var next []int
		for _, p := range cur {
			next = union(next, g.matchOnce(it, in, p))
		}
		if n >= it.min && it.max < 0 {
			// Unbounded: go on only from positions not reached before.
			next = slices.DeleteFunc(next, func(p int) bool { return seen[p] })
			for _, p := range next {
				seen[p] = true
			}
		}
		if len(next) == 0 {
			break
		}
		if n >= it.min {
			ends = union(ends, next)
		}
		cur = next
	}
	return ends
}

func (g *gbnf) matchOnce(it item, in []rune, pos int) []int {
	switch {
	case it.isGroup:
		return g.matchAlts(it.group, in, pos)
	case it.ref != "":
		return g.matchRule(it.ref, in, pos)
	case it.class != nil:
		if pos >= len(in) {
			return nil
		}
		in := slices.ContainsFunc(it.class.ranges, func(r [2]rune) bool { return r[0] <= in[pos] && in[pos] <= r[1] })
		if in != it.class.neg {
			return []int{pos + 1}
		}
		return nil
	}
	if pos+len(it.lit) <= len(in) && slices.Equal(in[pos:pos+len(it.lit)], it.lit) {
		return []int{pos + len(it.lit)}
	}
	return nil
}

// union merges two sorted sets of positions.
func union(a, b []int) []int {
	out := append(slices.Clone(a), b...)
	slices.Sort(out)
	return slices.Compact(out)
}
