package batch

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestResumeTornLine checks the resume reader: finished custom_ids are
// read, a last line torn by a crash is cut off, and a file that is not a batch
// output is refused.
func TestResumeTornLine(t *testing.T) {
	dir := t.TempDir()
	good := func(id string) string {
		return `{"id":"batch_req_1","custom_id":"` + id + `","response":{"status_code":200,"request_id":"r","body":{}},"error":null}` + "\n"
	}
	torn := `{"id":"batch_req_3","custom_id":"c","respon`
	path := filepath.Join(dir, "out.jsonl")
	os.WriteFile(path, []byte(good("a")+good("b")+torn), 0o644)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	done, cut, err := resumeOutput(f)
	if err != nil || len(done) != 2 || !done["a"] || !done["b"] || cut != int64(len(torn)) {
		t.Fatalf("resumeOutput = %v, cut %d, %v; want a and b, %d bytes cut", done, cut, err, len(torn))
	}
	// The next line appended starts on its own line.
	f.Write([]byte(good("c")))
	b, _ := os.ReadFile(path)
	if string(b) != good("a")+good("b")+good("c") {
		t.Fatalf("after the cut and one more line, the file is %q", b)
	}

	// A complete last line that only lacks its newline is torn too: its write did
	// not finish, so its request runs again.
	os.WriteFile(path, []byte(good("a")+strings.TrimSuffix(good("b"), "\n")), 0o644)
	f2, _ := os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0)
	defer f2.Close()
	if done, cut, err := resumeOutput(f2); err != nil || len(done) != 1 || cut == 0 {
		t.Fatalf("resumeOutput(no final newline) = %v, cut %d, %v; want only a", done, cut, err)
	}

	os.WriteFile(path, []byte(good("a")+"hello\n"+good("b")), 0o644)
	f3, _ := os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0)
	defer f3.Close()
	if _, _, err := resumeOutput(f3); err == nil || !strings.Contains(err.Error(), "line 2 is not a batch output line") {
		t.Fatalf("resumeOutput(a foreign line 2) = %v; want refused", err)
	}
}
