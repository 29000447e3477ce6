//go:build integration

package integration

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// realLayer writes a tar of real files from this machine (a binary and text) and returns its path
// and the files' contents by name.
func realLayer(t *testing.T) (string, map[string][]byte) {
	t.Helper()
	files := map[string][]byte{}
	for name, src := range map[string]string{"bin/ls": "/bin/ls", "etc/os-release": "/etc/os-release"} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		files[name] = b
	}
	files["app/greeting.txt"] = []byte("hello from " + t.Name() + "\n")
	p := filepath.Join(t.TempDir(), "layer.tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	for name, b := range files {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(b)), Typeflag: tar.TypeReg})
		tw.Write(b)
	}
	tw.Close()
	f.Close()
	return p, files
}

func sha256hex(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// pushImage pushes a one-layer image of real files with crane and returns its digest.
func pushImage(t *testing.T, crane, ref string) (string, map[string][]byte) {
	t.Helper()
	layer, files := realLayer(t)
	run(t, nil, crane, "append", "--insecure", "--oci-empty-base", "-f", layer, "-t", ref)
	d := strings.TrimSpace(run(t, nil, crane, "mutate", "--insecure", "--set-platform", "linux/amd64", ref, "-t", ref))
	_, digest, _ := strings.Cut(d, "@")
	return digest, files
}

// assertFiles exports an image's filesystem with crane and compares the given files byte for byte.
func assertFiles(t *testing.T, crane, ref string, files map[string][]byte) {
	t.Helper()
	exported := filepath.Join(t.TempDir(), "fs.tar")
	run(t, nil, crane, "export", "--insecure", ref, exported)
	f, err := os.Open(exported)
	if err != nil {
		t.Fatal(err)
	}
	got := untar(t, f)
	f.Close()
	for name, want := range files {
		if !bytes.Equal(got[name], want) {
			t.Errorf("%s: file %s differs (%d bytes, want %d)", ref, name, len(got[name]), len(want))
		}
	}
}

// untar reads a tar stream into name -> content.
func untar(t *testing.T, r io.Reader) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		out[strings.TrimPrefix(h.Name, "/")] = b
	}
}

func TestCrane(t *testing.T) {
	crane := tool(t, "crane")
	srv := startGatehouse(t, "storage: {delete: true}\n")
	ref := srv.addr + "/clients/crane:v1"
	digest, files := pushImage(t, crane, ref)

	if got := strings.TrimSpace(run(t, nil, crane, "digest", "--insecure", ref)); got != digest {
		t.Fatalf("crane digest = %s, want %s", got, digest)
	}
	raw := run(t, nil, crane, "manifest", "--insecure", ref)
	if "sha256:"+sha256hex([]byte(raw)) != digest {
		t.Fatalf("manifest bytes do not hash to %s", digest)
	}
	// pull back the filesystem and compare every file byte for byte
	assertFiles(t, crane, ref, files)
	// pull as an OCI layout too
	run(t, nil, crane, "pull", "--insecure", "--format", "oci", ref, filepath.Join(t.TempDir(), "layout"))

	// copy to another repository (cross-repo mount) and tag
	copyRef := srv.addr + "/clients/crane-copy:v1"
	run(t, nil, crane, "copy", "--insecure", ref, copyRef)
	if got := strings.TrimSpace(run(t, nil, crane, "digest", "--insecure", copyRef)); got != digest {
		t.Errorf("copy digest = %s, want %s", got, digest)
	}
	run(t, nil, crane, "tag", "--insecure", ref, "v2")
	if tags := strings.Fields(run(t, nil, crane, "ls", "--insecure", srv.addr+"/clients/crane")); strings.Join(tags, ",") != "v1,v2" {
		t.Errorf("crane ls = %v, want [v1 v2]", tags)
	}
	// a multi-platform index over two images
	armRef := srv.addr + "/clients/crane:arm"
	pushImage(t, crane, armRef)
	run(t, nil, crane, "mutate", "--insecure", "--set-platform", "linux/arm64", armRef, "-t", armRef)
	run(t, nil, crane, "index", "append", "--insecure", "-m", ref, "-m", armRef, "-t", srv.addr+"/clients/crane:multi")
	idx := run(t, nil, crane, "manifest", "--insecure", srv.addr+"/clients/crane:multi")
	if !strings.Contains(idx, `"arm64"`) || !strings.Contains(idx, digest) {
		t.Errorf("index lacks its children: %s", idx)
	}
	if got := strings.TrimSpace(run(t, nil, crane, "digest", "--insecure", "--platform", "linux/amd64", srv.addr+"/clients/crane:multi")); got != digest {
		t.Errorf("platform child digest = %s, want %s", got, digest)
	}
	catalog := run(t, nil, crane, "catalog", "--insecure", srv.addr)
	if !strings.Contains(catalog, "clients/crane-copy") {
		t.Errorf("catalog lacks clients/crane-copy: %s", catalog)
	}

	// delete by digest: gone, tags with it
	run(t, nil, crane, "delete", "--insecure", srv.addr+"/clients/crane-copy@"+digest)
	resp, err := http.Get(srv.url("/v2/clients/crane-copy/manifests/v1"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("after delete, GET by tag = %d, want 404", resp.StatusCode)
	}
	srv.healthy(t)
}

func TestOras(t *testing.T) {
	oras := tool(t, "oras")
	srv := startGatehouse(t, "")
	dir := t.TempDir()
	content := []byte("an artifact that is not an image\n")
	os.WriteFile(filepath.Join(dir, "artifact.txt"), content, 0o644)
	os.WriteFile(filepath.Join(dir, "sbom.json"), []byte(`{"bomFormat":"CycloneDX"}`), 0o644)
	ref := srv.addr + "/clients/oras:v1"
	cmdIn := func(args ...string) string {
		t.Helper()
		return runDir(t, dir, nil, oras, args...)
	}
	cmdIn("push", "--plain-http", "--artifact-type", "application/vnd.example.thing", ref, "artifact.txt:text/plain")
	cmdIn("attach", "--plain-http", "--artifact-type", "application/vnd.example.sbom", ref, "sbom.json:application/json")

	out := cmdIn("discover", "--plain-http", "--format", "json", ref)
	var disc map[string]any
	if err := json.Unmarshal([]byte(out), &disc); err != nil {
		t.Fatalf("oras discover json: %v\n%s", err, out)
	}
	var refs []any
	for _, k := range []string{"referrers", "manifests"} {
		if v, ok := disc[k].([]any); ok {
			refs = v
		}
	}
	if len(refs) != 1 || !strings.Contains(out, "application/vnd.example.sbom") {
		t.Fatalf("oras discover found %d referrers, want the sbom:\n%s", len(refs), out)
	}
	pulled := t.TempDir()
	runDir(t, pulled, nil, oras, "pull", "--plain-http", ref)
	got, err := os.ReadFile(filepath.Join(pulled, "artifact.txt"))
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("pulled artifact = %q, %v", got, err)
	}
	// filtered referrers through the API itself
	manifestDigest := strings.TrimSpace(runDir(t, dir, nil, oras, "resolve", "--plain-http", ref))
	resp, err := http.Get(srv.url("/v2/clients/oras/referrers/" + manifestDigest + "?artifactType=application/vnd.example.sbom"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Header.Get("OCI-Filters-Applied") != "artifactType" || !strings.Contains(string(body), "application/vnd.example.sbom") {
		t.Errorf("filtered referrers: %s %v", body, resp.Header)
	}
	srv.healthy(t)
}

func TestSkopeo(t *testing.T) {
	skopeo := tool(t, "skopeo")
	crane := tool(t, "crane")
	srv := startGatehouse(t, "")
	src := srv.addr + "/clients/skopeo-src:v1"
	digest, _ := pushImage(t, crane, src)
	noTLS := []string{"--src-tls-verify=false", "--dest-tls-verify=false"}

	// registry -> registry
	run(t, nil, skopeo, append(append([]string{"copy"}, noTLS...), "docker://"+src, "docker://"+srv.addr+"/clients/skopeo-dst:v1")...)
	raw := run(t, nil, skopeo, "inspect", "--tls-verify=false", "--raw", "docker://"+srv.addr+"/clients/skopeo-dst:v1")
	if "sha256:"+sha256hex([]byte(raw)) != digest {
		t.Errorf("skopeo copy changed the manifest: got %s, want %s", "sha256:"+sha256hex([]byte(raw)), digest)
	}
	// registry -> OCI layout -> registry
	layout := filepath.Join(t.TempDir(), "layout")
	run(t, nil, skopeo, append(append([]string{"copy"}, noTLS...), "docker://"+src, "oci:"+layout+":v1")...)
	run(t, nil, skopeo, append(append([]string{"copy"}, noTLS...), "oci:"+layout+":v1", "docker://"+srv.addr+"/clients/skopeo-oci:v1")...)
	raw = run(t, nil, skopeo, "inspect", "--tls-verify=false", "--raw", "docker://"+srv.addr+"/clients/skopeo-oci:v1")
	if "sha256:"+sha256hex([]byte(raw)) != digest {
		t.Errorf("layout round trip changed the manifest")
	}
	srv.healthy(t)
}

func TestCosign(t *testing.T) {
	cosign := tool(t, "cosign")
	crane := tool(t, "crane")
	srv := startGatehouse(t, "")
	ref := srv.addr + "/clients/signed:v1"
	digest, _ := pushImage(t, crane, ref)
	byDigest := srv.addr + "/clients/signed@" + digest

	dir := t.TempDir()
	env := []string{"COSIGN_PASSWORD=", "HOME=" + dir, "TUF_ROOT=" + filepath.Join(dir, "tuf")}
	runDir(t, dir, env, cosign, "generate-key-pair")
	run(t, env, cosign, "sign", "--key", filepath.Join(dir, "cosign.key"), "--tlog-upload=false", "--allow-insecure-registry", "-y", byDigest)

	// the signature is stored in the registry: cosign's tag or an OCI referrer
	tags := run(t, nil, crane, "ls", "--insecure", srv.addr+"/clients/signed")
	resp, err := http.Get(srv.url("/v2/clients/signed/referrers/" + digest))
	if err != nil {
		t.Fatal(err)
	}
	refs, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	sigTag := strings.Replace(digest, ":", "-", 1) + ".sig"
	if !strings.Contains(tags, sigTag) && !strings.Contains(string(refs), "sigstore") {
		t.Fatalf("no signature stored: tags %q, referrers %s", tags, refs)
	}
	out := run(t, env, cosign, "verify", "--key", filepath.Join(dir, "cosign.pub"), "--insecure-ignore-tlog", "--allow-insecure-registry", byDigest)
	if !strings.Contains(out, digest) {
		t.Errorf("cosign verify output does not name the digest:\n%s", out)
	}
	// verification is cryptographic: another key must not verify
	other := t.TempDir()
	runDir(t, other, env, cosign, "generate-key-pair")
	if err := tryRun(env, cosign, "verify", "--key", filepath.Join(other, "cosign.pub"), "--insecure-ignore-tlog", "--allow-insecure-registry", byDigest); err == nil {
		t.Error("cosign verify passed with a key that did not sign")
	}
	srv.healthy(t)
}
