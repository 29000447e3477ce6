package api

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkManifestGetCached measures the handler's cost for a cached pull by digest, without
// the network (the end-to-end comparison is integration/bench).
func BenchmarkManifestGetCached(b *testing.B) {
	f := newFixture(b)
	_, d := f.pushImage("bench/app", "v1")
	h := f.srv.Config.Handler
	req := httptest.NewRequest(http.MethodGet, "/v2/bench/app/manifests/"+d.String(), nil)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatalf("status %d", w.Code)
		}
	}
}
