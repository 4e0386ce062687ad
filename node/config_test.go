package node

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/runtime"
)

// The file `cocoon init` writes must say exactly what Defaults says.
func TestTemplateMatchesDefaults(t *testing.T) {
	var cfg Config
	if err := Parse([]byte(configTemplate), &cfg); err != nil {
		t.Fatalf("template does not parse: %v", err)
	}
	if want := Defaults(); !reflect.DeepEqual(cfg, want) {
		t.Fatalf("template = %+v\ndefaults = %+v", cfg, want)
	}
}

func TestParseErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ toml, field string }{
		{"[p2p]\nlisen = []", "unknown key p2p.lisen"},
		{"colour = 'blue'", "unknown key colour"},
		{"[p2p]\nlisten = ['/ip4/1.2.3.4/tcp/notaport']", "p2p.listen[0]"},
		{"[p2p]\nbootstrap = ['/ip4/127.0.0.1/tcp/1']", "p2p.bootstrap[0]"},
		{"[p2p]\ndht_mode = 'sometimes'", "p2p.dht_mode"},
		{"[p2p]\nreprovide_interval = 'soon'", "reprovide_interval"},
		{"[p2p]\nreprovide_interval = '72h'", "p2p.reprovide_interval"},
		{"[p2p.limits]\nconns_low = 10\nconns_high = 5", "p2p.limits.conns_high"},
		{"[api]\nlisten = 'localhost'", "api.listen"},
		{"[log]\nlevel = 'loud'", "log.level"},
		{"[log]\nformat = 'xml'", "log.format"},
		{"[p2p]\nmdns = 'yes'", "mdns"},
		{"[p2p\n", "line 2"},
		{"[[market.prices]]\nmodel = ''\nprompt = 1", "market.prices[0].model"},
		{"[[market.prices]]\nmodel = 'm'\nprompt = 1\n[[market.prices]]\nmodel = 'm'\nprompt = 2", "market.prices[1].model"},
		{"[[market.prices]]\nmodel = 'm'", "market.prices[0]"},
		{"[[market.prices]]\nmodel = 'm'\nprompt = -1", "market.prices[0].prompt"},
		{"[market]\ncredit_tokens = -5", "market.credit_tokens"},
		{"[market]\nmin_deposit = -5", "market.min_deposit"},
		{"[market]\nmodels = ['a', '']", "market.models[1]"},
		{"[market]\nmodels = [\"a\\u0001b\"]", "market.models[0]"},
		{"[market]\ntopic_idle = '0s'", "market.topic_idle"},
		{"[market]\nmax_completion_price = -5", "market.max_completion_price"},
		{"[market]\naccept_tee = ['tdx']", "market.accept_tee: removed, replaced by enclave.policy.allowed_kinds"},
		{"[enclave]\nattester = 'sim'", "enclave.attester"},
		{"[enclave]\nattester = 'magic'", "enclave.attester"},
		{"[enclave]\nattester = 'tdx'\nmeasurement = 'zz'", "enclave.measurement"},
		{"[enclave]\nattester = 'none'\nmeasurement = 'abcd'", "enclave.measurement"},
		{"[enclave.policy]\nallowed_kinds = ['sim']", "enclave.policy"},
		{"[enclave.policy]\nallowed_kinds = ['sgx']", "enclave.policy"},
		{"[enclave.policy]\nallowed_kinds = ['tdx']\n[enclave.policy.allowed_measurements]\nsgx = []", "enclave.policy"},
		{"[enclave.policy]\nmax_evidence_age = 'old'", "max_evidence_age"},
		{"[settle]\nchain = 'ton'", "settle.ton_network"},
		{"[settle]\nchain = 'ton'\nton_network = 'moon'", "settle.ton_network"},
		{"[settle]\nchain = 'eth'", "settle.chain"},
		{"[settle]\nton_network = 'mainnet'", "settle.ton_network"},
		{"[settle]\nton_config = 'x.json'", "settle.ton_config"},
		{"[settle]\nchain = 'ton'\nton_network = 'testnet'\ndevledger_url = 'http://x'", "settle.devledger_url"},
		{"[settle]\nchain = 'devledger'", "settle.devledger_url"},
		{"[settle]\ndevledger_url = 'http://127.0.0.1:8590'", "settle.devledger_url"},
	} {
		cfg := Defaults()
		err := Parse([]byte(tc.toml), &cfg)
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("Parse(%q) = %v; want an error naming %s", tc.toml, err, tc.field)
			continue
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("Parse(%q) error spans lines: %q", tc.toml, err)
		}
	}
}

// A config that still sets a removed key stops the node with one line that
// names the key and what replaced it, even beside other unknown keys.
func TestRemovedKeyNamesItsReplacement(t *testing.T) {
	for _, conf := range []string{
		"[market]\naccept_tee = ['tdx', 'sev-snp']",
		"[market]\naccept_tee = ['none']\ncolour = 'blue'",
		"[market]\naccept_tee = []",
	} {
		cfg := Defaults()
		err := Parse([]byte(conf), &cfg)
		if err == nil {
			t.Fatalf("Parse(%q) = nil; want the removed key refused", conf)
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, "market.accept_tee: removed, replaced by enclave.policy.allowed_kinds") || strings.Contains(msg, "\n") {
			t.Errorf("Parse(%q) = %q; want one line naming market.accept_tee and enclave.policy.allowed_kinds", conf, msg)
		}
	}
}

// One setting, [enclave.policy] allowed_kinds, decides which workers the
// client selects (clientPolicy) and which evidence its verifier accepts
// (Policy.Accepts): a worker without a TEE is bought from exactly when the
// list has "none".
func TestOneSettingForWhatTheClientBuys(t *testing.T) {
	for _, tc := range []struct {
		conf     string
		wantNone bool
		wantSim  bool
	}{
		{"", false, false},
		{"[enclave.policy]\nallowed_kinds = ['tdx', 'none']", true, false},
		{"[enclave.policy]\nallowed_kinds = ['none']", true, false},
		{"[enclave.policy]\nallow_sim = true", false, false},
		{"[enclave.policy]\nallowed_kinds = ['sim']\nallow_sim = true", false, true},
		{"[enclave.policy]\nallowed_kinds = ['sim', 'none']\nallow_sim = true", true, true},
	} {
		cfg := Defaults()
		if err := Parse([]byte(tc.conf), &cfg); err != nil {
			t.Fatalf("Parse(%q): %v", tc.conf, err)
		}
		pol := cfg.clientPolicy()
		for _, k := range tee.Kinds {
			if sel, ver := pol.Allows(k), cfg.Enclave.Policy.Accepts(k); sel != ver {
				t.Errorf("%q: kind %s selected %v but verified %v; want one answer", tc.conf, k, sel, ver)
			}
		}
		if got := pol.Allows(tee.None); got != tc.wantNone {
			t.Errorf("%q: buys from a worker without a TEE = %v; want %v", tc.conf, got, tc.wantNone)
		}
		if got := pol.Allows(tee.Sim); got != tc.wantSim {
			t.Errorf("%q: buys from a sim worker = %v; want %v", tc.conf, got, tc.wantSim)
		}
	}
}

func TestInitFilesAndModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dd")
	id, err := Init(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{IdentityFile: 0o600, TokenFile: 0o600, ConfigFile: 0o644} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s mode %04o; want %04o", name, st.Mode().Perm(), mode)
		}
	}
	if _, err := Load(dir); err != nil {
		t.Fatalf("Load after Init: %v", err)
	}
	sk, err := LoadIdentity(filepath.Join(dir, IdentityFile))
	if err != nil {
		t.Fatal(err)
	}
	if sk.Type().String() != "Ed25519" {
		t.Errorf("identity key type %s; want Ed25519", sk.Type())
	}
	if _, err := Init(dir, false); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("second Init = %v; want refusal mentioning --force", err)
	}
	id2, err := Init(dir, true)
	if err != nil || id2 == id {
		t.Fatalf("Init --force = %s, %v; want a new peer ID", id2, err)
	}
}

func TestLoadIdentityRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open.key")
	if _, err := Init(dir, false); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, IdentityFile))
	os.WriteFile(open, raw, 0o644)
	if _, err := LoadIdentity(open); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("LoadIdentity(0644 file) = %v; want a refusal", err)
	}
	garbage := filepath.Join(dir, "garbage.key")
	os.WriteFile(garbage, []byte("not a key"), 0o600)
	if _, err := LoadIdentity(garbage); err == nil || !strings.Contains(err.Error(), "not a libp2p private key") {
		t.Errorf("LoadIdentity(garbage) = %v", err)
	}
	if _, err := LoadIdentity(filepath.Join(dir, "missing.key")); err == nil {
		t.Error("LoadIdentity(missing) succeeded")
	}
}

func TestAPINeedsToken(t *testing.T) {
	dir, cfg := loopbackConfig(t)
	n, err := New(t.Context(), cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	srv := httptest.NewServer(n.API.Handler())
	defer srv.Close()
	for _, tc := range []struct {
		auth string
		code int
	}{{"", 401}, {"Bearer wrong", 401}, {"Basic " + n.Token, 401}, {"Bearer " + n.Token, 200}} {
		req, _ := http.NewRequest("GET", srv.URL+"/api/v0/status", nil)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Errorf("Authorization %q: status %d; want %d", tc.auth, resp.StatusCode, tc.code)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, APIAddrFile))
	if err != nil || strings.TrimSpace(string(b)) != n.APIAddr {
		t.Errorf("api.addr = %q, %v; want %s", b, err, n.APIAddr)
	}
}

// A node that prices the models it serves but has no wallet cannot be paid: New
// refuses it with one line naming the field, before loading any model.
func TestSellerNeedsWallet(t *testing.T) {
	dir, cfg := loopbackConfig(t)
	model := filepath.Join(dir, "m.gguf")
	if err := os.WriteFile(model, []byte("not loaded"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.Runtime.Models = []runtime.ModelConfig{{Path: model, ID: "m"}}
	cfg.Market.Prices = []ModelPrice{{Model: "m", Prompt: 1, Completion: 1}}
	n, err := New(context.Background(), cfg, Options{Logger: slog.New(slog.DiscardHandler)})
	if err == nil {
		n.Close()
		t.Fatal("New started a seller without a wallet")
	}
	if !strings.Contains(err.Error(), "market.prices") || !strings.Contains(err.Error(), "wallet") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("New = %v; want one line naming market.prices and the wallet", err)
	}
}

// What Save writes, Load reads back unchanged.
func TestSaveLoadRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if _, err := Init(dir, false); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg.P2P.Bootstrap = []string{"/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"}
	cfg.Market.Prices = []ModelPrice{{Model: "m", Prompt: 5, Completion: 7}}
	cfg.Enclave.Attester = tee.Sim
	cfg.Enclave.Policy.AllowSim = true
	cfg.Enclave.Policy.AllowedKinds = []tee.Kind{tee.Sim, tee.None}
	cfg.Settle.Chain, cfg.Settle.DevLedgerURL = ChainDevLedger, "http://127.0.0.1:8590"
	if err := Save(dir, cfg); err != nil {
		t.Fatal(err)
	}
	got, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, cfg) {
		t.Fatalf("loaded %+v\nsaved  %+v", got, cfg)
	}
}

// TestTONChainUnreachable: chain ton with a global config that is missing, or
// whose only liteserver does not answer, stops the node with one line naming
// settle.ton_config. (Reaching TON itself needs the internet, which tests have
// not; the ledger's messages are tested against a fake liteserver API in
// settle/tonchain.)
func TestTONChainUnreachable(t *testing.T) {
	dir, cfg := loopbackConfig(t)
	cfg.Settle.Chain, cfg.Settle.TONNetwork = ChainTON, "testnet"

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close() // nothing listens there now
	global := filepath.Join(dir, "global.config.json")
	conf := fmt.Sprintf(`{"liteservers":[{"ip":2130706433,"port":%d,"id":{"@type":"pub.ed25519","key":"%s"}}],"validator":{"@type":"validator.config.global","zero_state":{"workchain":-1,"shard":-9223372036854775808,"seqno":0,"root_hash":"F6OpKZKqvqeFp6CQmFomXNMfMj2EnaUSOXN+Mh+wVWk=","file_hash":"XplPz01CXAps5qeSWUtxcyBfdAo5zVb1N979KLSKD24="}}}`,
		port, base64.StdEncoding.EncodeToString(make([]byte, 32)))
	if err := os.WriteFile(global, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, config string }{
		{"missing file", filepath.Join(dir, "absent.json")},
		{"liteserver down", global},
	} {
		cfg.Settle.TONConfig = tc.config
		start := time.Now()
		n, err := New(context.Background(), cfg, Options{Logger: slog.New(slog.DiscardHandler)})
		if err == nil {
			n.Close()
			t.Fatalf("%s: the node started", tc.name)
		}
		if !strings.HasPrefix(err.Error(), "settle.ton_config: ") || strings.Contains(err.Error(), "\n") {
			t.Fatalf("%s: New = %v; want one line naming settle.ton_config", tc.name, err)
		}
		t.Logf("%s: %v (after %v)", tc.name, err, time.Since(start).Round(time.Millisecond))
	}
}

// loopbackConfig initialises a datadir and returns it with its config, the libp2p
// host and the API on 127.0.0.1 ports of the system's choosing.
func loopbackConfig(t *testing.T) (string, Config) {
	t.Helper()
	dir := t.TempDir()
	if _, err := Init(dir, false); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg.P2P.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.API.Listen = "127.0.0.1:0"
	return dir, cfg
}
