package gateway

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"fmt"
	"html/template"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The status page: server-rendered with html/template from files embedded in
// the binary, no front-end build step and nothing fetched from elsewhere. The
// first render is complete without JavaScript; a small inline script then
// fetches the live part, rendered by the same template, every RefreshInterval
// and swaps it in.

//go:embed page/*
var pageFiles embed.FS

// RefreshInterval is how often the status page fetches its live part.
const RefreshInterval = time.Second

var pageTmpl = template.Must(template.New("").Funcs(template.FuncMap{
	"short":   shortID,
	"nano":    groupDigits,
	"ton":     tonString,
	"ms":      msString,
	"since":   sinceString,
	"uptime":  uptimeString,
	"gib":     gibString,
	"join":    strings.Join,
	"count":   countString,
	"refresh": func() int64 { return RefreshInterval.Milliseconds() },
}).ParseFS(pageFiles, "page/*.html"))

// The page's own stylesheet and script, inlined (under the CSP nonce) so that
// the page is one request.
var (
	pageCSS = template.CSS(mustRead("page/page.css"))
	pageJS  = template.JS(mustRead("page/page.js"))
)

func mustRead(name string) string {
	b, err := pageFiles.ReadFile(name)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// pageData is what page.html renders.
type pageData struct {
	Overview
	Nonce  string
	CSS    template.CSS
	Script template.JS
}

// Browsers cannot send the bearer token, so the status page signs in once with
// GET /?token=T, which sets a cookie derived from the token. The cookie's name
// is derived from the token too, so that several nodes on one host (cookies
// ignore ports) each keep their own.
const (
	cookieNameDomain  = "cocoon status cookie name v1"
	cookieValueDomain = "cocoon status cookie value v1"
)

func cookieHash(domain, token string) string {
	h := sha256.Sum256([]byte(domain + "\x00" + token))
	return hex.EncodeToString(h[:])
}

// cookieName is the name of this node's status-page cookie.
func (s *Server) cookieName() string { return "cocoon_" + cookieHash(cookieNameDomain, s.token)[:12] }

// cookieOK reports whether r carries this node's status-page cookie.
func (s *Server) cookieOK(r *http.Request) bool {
	c, err := r.Cookie(s.cookieName())
	if err != nil {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(c.Value), []byte(cookieHash(cookieValueDomain, s.token))) == 1
}

// cookieAllowed says which requests the cookie authenticates: GET of the
// status page and of the read-only /api/v0 views, nothing else. A browser sends
// cookies by itself with requests that other pages cause: SameSite=Strict stops
// other sites, but any page served from 127.0.0.1 on another port is the same
// site. So the cookie must never authorize what spends money or changes state
// (/v1 buys inference; every non-GET method), nor /metrics, which stays for
// scrapers with the token; and every GET it allows has no side effects. Reading
// the answers is left to the browser's same-origin policy (another port is
// another origin), and DNS rebinding gets no cookie (it is bound to the host
// name the user opened).
func cookieAllowed(r *http.Request) bool {
	return r.Method == http.MethodGet && (r.URL.Path == "/" || strings.HasPrefix(r.URL.Path, "/api/v0/"))
}

// signIn answers GET /?token=T: with the right token it sets the cookie and
// redirects to /, which drops the token from the address bar and history.
func (s *Server) signIn(w http.ResponseWriter, r *http.Request, token string) {
	if subtle.ConstantTimeCompare([]byte(token), []byte(s.token)) != 1 {
		s.log.Info("status page: wrong token in ?token=", "remote", r.RemoteAddr)
		s.unauthorizedPage(w, r, "The token in the address is not this node's.")
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: s.cookieName(), Value: cookieHash(cookieValueDomain, s.token),
		Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode,
	})
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// unauthorizedPage is the 401 answer to a browser asking for / without the
// token or the cookie: it says where the token is and how to open the page.
func (s *Server) unauthorizedPage(w http.ResponseWriter, r *http.Request, why string) {
	host := r.Host
	if host == "" {
		host = "127.0.0.1"
	}
	nonce := newNonce()
	var b bytes.Buffer
	if err := pageTmpl.ExecuteTemplate(&b, "unauthorized", map[string]any{
		"Why": why, "URL": "http://" + host + "/?token=", "CSS": pageCSS, "Nonce": nonce,
	}); err != nil {
		s.log.Error("status page: render the sign-in page", "err", err)
	}
	setPageHeaders(w, nonce)
	w.Header().Set("WWW-Authenticate", `Bearer realm="cocoon"`)
	w.WriteHeader(http.StatusUnauthorized)
	w.Write(b.Bytes())
}

func newNonce() string {
	var raw [16]byte
	rand.Read(raw[:])                 // crypto/rand.Read never fails
	return hex.EncodeToString(raw[:]) // hex: html/template would escape base64's + and / in the attribute
}

// setPageHeaders keeps the page to itself: only its own inline code runs (by
// nonce; with none, nothing runs), it fetches only from this node, nothing
// frames it, it is never cached and never sends a Referer.
func setPageHeaders(w http.ResponseWriter, nonce string) {
	h := w.Header()
	csp := "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
	if nonce != "" {
		csp += fmt.Sprintf("; script-src 'nonce-%s'; style-src 'nonce-%s'; connect-src 'self'", nonce, nonce)
	}
	h.Set("Content-Security-Policy", csp)
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
}

func (s *Server) servePage(w http.ResponseWriter, r *http.Request) {
	d := pageData{Overview: s.info.Overview(), Nonce: newNonce(), CSS: pageCSS, Script: pageJS}
	var b bytes.Buffer
	if err := pageTmpl.ExecuteTemplate(&b, "page.html", d); err != nil {
		s.log.Error("status page: render", "err", err)
		http.Error(w, "render the status page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	setPageHeaders(w, d.Nonce)
	w.Write(b.Bytes())
}

// serveLive answers GET /api/v0/overview.html: the page's live part alone, what
// its script swaps in.
func (s *Server) serveLive(w http.ResponseWriter, r *http.Request) {
	var b bytes.Buffer
	if err := pageTmpl.ExecuteTemplate(&b, "live", s.info.Overview()); err != nil {
		s.log.Error("status page: render the live part", "err", err)
		http.Error(w, "render the status page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	setPageHeaders(w, "") // a fragment runs nothing of its own
	w.Write(b.Bytes())
}

func (s *Server) serveOverview(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, s.info.Overview())
}

// shortID shortens a long peer ID or address for a table cell; the page shows
// the whole one in the cell's title.
func shortID(s string) string {
	if len(s) <= 16 {
		return s
	}
	return s[:8] + "…" + s[len(s)-6:]
}

// groupDigits writes n with thin separators every three digits: 1 000 000.
func groupDigits(n uint64) string {
	s := strconv.FormatUint(n, 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteString("\u202f") // narrow no-break space
		}
		b.WriteRune(c)
	}
	return b.String()
}

// tonString is n nanoTON in TON, exact: 1500000000 → "1.5".
func tonString(n uint64) string {
	s := fmt.Sprintf("%d.%09d", n/1e9, n%1e9)
	s = strings.TrimRight(s, "0")
	return strings.TrimSuffix(s, ".")
}

func msString(ms float64) string {
	switch {
	case ms <= 0:
		return "—"
	case ms < 10:
		return strconv.FormatFloat(ms, 'f', 1, 64) + " ms"
	case ms < 1000:
		return strconv.FormatFloat(ms, 'f', 0, 64) + " ms"
	case ms < 10000:
		return strconv.FormatFloat(ms/1000, 'f', 2, 64) + " s"
	}
	return strconv.FormatFloat(ms/1000, 'f', 1, 64) + " s"
}

// sinceString says how long before now t was ("—" for a zero t; "in 4m" for
// a time ahead).
func sinceString(now, t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	d := now.Sub(t)
	if d < 0 {
		return "in " + roughDuration(-d)
	}
	return roughDuration(d) + " ago"
}

func roughDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return "<1s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// countString is "1 job", "2 jobs": n and the word, plural unless n is 1.
func countString(n uint64, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return strconv.FormatUint(n, 10) + " " + word + "s"
}

func uptimeString(sec float64) string {
	return roughDuration(time.Duration(sec * float64(time.Second)))
}

func gibString(b uint64) string {
	return strconv.FormatFloat(float64(b)/(1<<30), 'f', 1, 64) + " GiB"
}
