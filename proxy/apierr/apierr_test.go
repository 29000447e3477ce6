package apierr

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestWrite(t *testing.T) {
	tests := []struct {
		name       string
		method     string
		err        error
		wantStatus int
		wantCode   string
		wantMsg    string
	}{
		{"registered status", "GET", New(ManifestUnknown, "manifest %s not found", "sha256:ab"), 404, "MANIFEST_UNKNOWN", "manifest sha256:ab not found"},
		{"status override", "PUT", New(SizeInvalid, "too big").WithStatus(413), 413, "SIZE_INVALID", "too big"},
		{"wrapped", "GET", errors.Join(errors.New("ctx"), New(Denied, "no")), 403, "DENIED", "no"},
		{"plain error hides cause", "GET", errors.New("disk on fire at /secret/path"), 500, "UNKNOWN", "internal error; the server log has the details"},
		{"empty message uses code's", "GET", &Error{Code: NameUnknown}, 404, "NAME_UNKNOWN", NameUnknown.Message()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			Write(rec, httptest.NewRequest(tt.method, "/v2/", nil), tt.err)
			if rec.Code != tt.wantStatus {
				t.Errorf("status = %d, want %d", rec.Code, tt.wantStatus)
			}
			var got body
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatalf("body %q: %v", rec.Body, err)
			}
			if len(got.Errors) != 1 || got.Errors[0].Code != tt.wantCode || got.Errors[0].Message != tt.wantMsg {
				t.Errorf("body = %+v, want code %s message %q", got, tt.wantCode, tt.wantMsg)
			}
		})
	}
}

func TestWriteHeadHasNoBody(t *testing.T) {
	rec := httptest.NewRecorder()
	Write(rec, httptest.NewRequest(http.MethodHead, "/v2/x/blobs/sha256:00", nil), New(BlobUnknown, "gone"))
	if rec.Code != 404 || rec.Body.Len() != 0 {
		t.Errorf("HEAD: status %d body %q, want 404 and no body", rec.Code, rec.Body)
	}
}

func TestWriteHeaders(t *testing.T) {
	rec := httptest.NewRecorder()
	Write(rec, httptest.NewRequest("GET", "/v2/x/manifests/y", nil), New(TooManyRequests, "slow down").WithHeader("Retry-After", "30"))
	if rec.Code != 429 || rec.Header().Get("Retry-After") != "30" {
		t.Errorf("status %d, Retry-After %q", rec.Code, rec.Header().Get("Retry-After"))
	}
}
