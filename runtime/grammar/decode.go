package grammar

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// node is one JSON value of a schema. Objects keep their members in document
// order: the grammar writes properties in the order the schema lists them,
// which encoding/json's maps would lose.
type node struct {
	kind kind
	keys []string // object member names, in order
	vals []*node  // object member values (parallel to keys), or array elements
	text string   // a string's value, or a number as written
	b    bool
}

type kind uint8

const (
	kindNull kind = iota
	kindBool
	kindNumber
	kindString
	kindArray
	kindObject
)

func (k kind) String() string {
	return [...]string{"null", "a boolean", "a number", "a string", "an array", "an object"}[k]
}

// get returns the member key of an object, nil if there is none.
func (n *node) get(key string) *node {
	if n.kind != kindObject {
		return nil
	}
	for i, k := range n.keys {
		if k == key {
			return n.vals[i]
		}
	}
	return nil
}

// at resolves a JSON pointer (RFC 6901, already percent-decoded) from n.
func (n *node) at(ptr string) (*node, bool) {
	if ptr == "" {
		return n, true
	}
	if ptr[0] != '/' {
		return nil, false
	}
	cur := n
	for _, seg := range strings.Split(ptr[1:], "/") {
		seg = strings.ReplaceAll(strings.ReplaceAll(seg, "~1", "/"), "~0", "~")
		switch cur.kind {
		case kindObject:
			if cur = cur.get(seg); cur == nil {
				return nil, false
			}
		case kindArray:
			i, err := strconv.Atoi(seg)
			if err != nil || i < 0 || i >= len(cur.vals) || strconv.Itoa(i) != seg {
				return nil, false
			}
			cur = cur.vals[i]
		default:
			return nil, false
		}
	}
	return cur, true
}

// escapePointer escapes one JSON pointer segment.
func escapePointer(seg string) string {
	return strings.ReplaceAll(strings.ReplaceAll(seg, "~", "~0"), "/", "~1")
}

// decode parses one JSON document of at most MaxSchemaBytes, nested at most
// MaxNesting deep, with no duplicate object keys (which JSON Schema leaves
// undefined and a grammar could honour only one of).
func decode(b []byte) (*node, error) {
	if len(b) > MaxSchemaBytes {
		return nil, &SchemaError{Reason: fmt.Sprintf("%d bytes, above the limit of %d", len(b), MaxSchemaBytes)}
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	n, err := parse(dec, 0)
	if err == nil {
		if _, end := dec.Token(); end != io.EOF {
			err = errors.New("data after the schema")
		}
	}
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, &SchemaError{Reason: "invalid JSON: " + err.Error()}
	}
	return n, nil
}

func parse(dec *json.Decoder, depth int) (*node, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		if depth >= MaxNesting {
			return nil, fmt.Errorf("nested deeper than %d", MaxNesting)
		}
		n := &node{kind: kindArray}
		if t == '{' {
			n.kind = kindObject
		}
		var seen map[string]bool
		for dec.More() {
			if n.kind == kindObject {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				key, _ := kt.(string)
				if seen == nil {
					seen = map[string]bool{}
				}
				if seen[key] {
					return nil, fmt.Errorf("key %q appears twice in one object", key)
				}
				seen[key] = true
				n.keys = append(n.keys, key)
			}
			v, err := parse(dec, depth+1)
			if err != nil {
				return nil, err
			}
			n.vals = append(n.vals, v)
		}
		if _, err := dec.Token(); err != nil { // the closing delimiter
			return nil, err
		}
		return n, nil
	case string:
		return &node{kind: kindString, text: t}, nil
	case json.Number:
		return &node{kind: kindNumber, text: string(t)}, nil
	case bool:
		return &node{kind: kindBool, b: t}, nil
	case nil:
		return &node{kind: kindNull}, nil
	}
	return nil, fmt.Errorf("unexpected token %v", tok)
}

// appendJSON appends n as compact JSON.
func appendJSON(b []byte, n *node) []byte {
	switch n.kind {
	case kindNull:
		return append(b, "null"...)
	case kindBool:
		return strconv.AppendBool(b, n.b)
	case kindNumber:
		return append(b, n.text...)
	case kindString:
		return appendJSONString(b, n.text)
	case kindArray:
		b = append(b, '[')
		for i, v := range n.vals {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSON(b, v)
		}
		return append(b, ']')
	default:
		b = append(b, '{')
		for i, k := range n.keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, k)
			b = append(b, ':')
			b = appendJSON(b, n.vals[i])
		}
		return append(b, '}')
	}
}

// appendJSONString appends s as a JSON string, leaving <, > and & alone
// (the model writes them as they are) and escaping what JSON requires.
func appendJSONString(b []byte, s string) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	return append(b, bytes.TrimSuffix(buf.Bytes(), []byte("\n"))...)
}
