package scan

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/gatehouse-dev/gatehouse/attest/layerfs"
)

// The EICAR test file (not malware; every scanner is meant to flag it).
const eicar = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

type file struct {
	name, body string
	mode       int64
}

func layer(t *testing.T, files ...file) layerfs.Layer {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		mode := f.mode
		if mode == 0 {
			mode = 0o644
		}
		tw.WriteHeader(&tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(f.body))})
		io.WriteString(tw, f.body)
	}
	tw.Close()
	b := buf.Bytes()
	return layerfs.Layer{Digest: digest.FromBytes(b), Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }}
}

func TestScanFindings(t *testing.T) {
	if digest.FromString(eicar) != EICAR {
		t.Fatalf("EICAR digest constant is wrong: %s", digest.FromString(eicar))
	}
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}))
	cfg := v1.Image{Platform: v1.Platform{OS: "linux", Architecture: "amd64"}}
	cfg.Config.Env = []string{"PATH=/usr/bin", "DB_PASSWORD=hunter2-not-real", "HOME=/root"}
	cfg.Config.ExposedPorts = map[string]struct{}{"22/tcp": {}, "8080/tcp": {}}
	cfg.History = []v1.History{{CreatedBy: "RUN echo hello"}}
	cfgJSON, _ := json.Marshal(cfg)

	base := layer(t, file{name: "usr/bin/apt", body: "apt", mode: 0o755}, file{name: "usr/bin/passwd", body: "passwd", mode: 0o4755})
	app := layer(t, file{name: "app/eicar.com", body: eicar}, file{name: "app/deploy_key", body: keyPEM})
	s := &Scanner{Malware: map[digest.Digest]string{digest.FromString("bad tool"): "bad tool"}}
	r, err := s.Scan(context.Background(), Image{Digest: "sha256:img", Config: cfgJSON, Layers: []layerfs.Layer{base, app}})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Complete || r.Read == 0 {
		t.Errorf("complete %v read %d", r.Complete, r.Read)
	}
	want := map[string]struct {
		path  string
		layer digest.Digest
	}{
		"GH-CFG-ROOT":          {"config:User", ""},
		"GH-CFG-REMOTE-SHELL":  {"config:ExposedPorts", ""},
		"GH-CFG-ENV-SECRET":    {"config:Env[1] (DB_PASSWORD)", ""},
		"GH-CFG-SETUID":        {"usr/bin/passwd", base.Digest},
		"GH-CFG-PKG-MANAGER":   {"usr/bin/apt", base.Digest},
		"GH-MALWARE":           {"app/eicar.com", app.Digest},
		"GH-SECRET-PRIVATEKEY": {"app/deploy_key", app.Digest},
	}
	got := map[string]Finding{}
	for _, f := range r.Findings {
		got[f.ID] = f
	}
	for id, w := range want {
		f, ok := got[id]
		if !ok {
			t.Errorf("no %s finding; findings: %+v", id, r.Findings)
			continue
		}
		if f.Path != w.path || f.Layer != w.layer {
			t.Errorf("%s at %q in %s, want %q in %s", id, f.Path, f.Layer, w.path, w.layer)
		}
	}
	blob, _ := json.Marshal(r)
	for _, leaked := range []string{"hunter2", keyPEM[40:80]} {
		if strings.Contains(string(blob), leaked) {
			t.Errorf("the result holds a secret's value (%q)", leaked)
		}
	}
	if len(got) != len(want) {
		t.Errorf("unexpected findings: %+v", r.Findings)
	}
}

func TestScanBoundedOnHostileLayer(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "../../../tmp/gatehouse-escape", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1})
	tw.Write([]byte("x"))
	tw.WriteHeader(&tar.Header{Name: "zeros", Typeflag: tar.TypeReg, Mode: 0o644, Size: 32 << 20})
	tw.Write(make([]byte, 32<<20))
	tw.Close()
	b := buf.Bytes()
	l := layerfs.Layer{Digest: digest.FromBytes(b), Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }}
	cfg, _ := json.Marshal(v1.Image{Config: v1.ImageConfig{User: "app"}})
	s := &Scanner{Limits: layerfs.Limits{MaxBytes: 4 << 20, MaxEntries: 100, MaxFileSize: 1 << 20, MaxPathLen: 255}}
	r, err := s.Scan(context.Background(), Image{Digest: "sha256:x", Config: cfg, Layers: []layerfs.Layer{l}})
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, f := range r.Findings {
		ids[f.ID] = true
	}
	if r.Complete || !ids["GH-LAYER-ESCAPE"] || !ids["GH-LAYER-INCOMPLETE"] || r.Expanded > 5<<20 {
		t.Errorf("complete %v expanded %d findings %+v", r.Complete, r.Expanded, r.Findings)
	}
}
