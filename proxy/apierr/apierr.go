package apierr

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/distribution/distribution/v3/registry/api/errcode"
)

// The OCI error codes Gatehouse uses, re-exported so callers need one import.
var (
	BlobUnknown         = errcode.ErrorCodeBlobUnknown
	BlobUploadInvalid   = errcode.ErrorCodeBlobUploadInvalid
	BlobUploadUnknown   = errcode.ErrorCodeBlobUploadUnknown
	DigestInvalid       = errcode.ErrorCodeDigestInvalid
	ManifestBlobUnknown = errcode.ErrorCodeManifestBlobUnknown
	ManifestInvalid     = errcode.ErrorCodeManifestInvalid
	ManifestUnknown     = errcode.ErrorCodeManifestUnknown
	NameInvalid         = errcode.ErrorCodeNameInvalid
	NameUnknown         = errcode.ErrorCodeNameUnknown
	SizeInvalid         = errcode.ErrorCodeSizeInvalid
	RangeInvalid        = errcode.ErrorCodeRangeInvalid
	TagInvalid          = errcode.ErrorCodeTagInvalid
	PaginationInvalid   = errcode.ErrorCodePaginationNumberInvalid
	Unauthorized        = errcode.ErrorCodeUnauthorized
	Denied              = errcode.ErrorCodeDenied
	Unsupported         = errcode.ErrorCodeUnsupported
	Unavailable         = errcode.ErrorCodeUnavailable
	TooManyRequests     = errcode.ErrorCodeTooManyRequests
	Unknown             = errcode.ErrorCodeUnknown
)

// Error is one OCI error: a registered code, a message a person can act on, optional detail,
// and optionally a status other than the code's default.
type Error struct {
	Code    errcode.ErrorCode
	Message string
	Detail  any
	Status  int         // 0: the code's registered status
	Err     error       // the cause, logged but never sent to the client
	Header  http.Header // extra response headers (Retry-After, ...)
}

// New returns an Error with a formatted message.
func New(code errcode.ErrorCode, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// WithStatus overrides the HTTP status sent with the error.
func (e *Error) WithStatus(status int) *Error { e.Status = status; return e }

// WithDetail attaches a JSON-encodable detail object.
func (e *Error) WithDetail(detail any) *Error { e.Detail = detail; return e }

// WithHeader adds a response header sent with the error.
func (e *Error) WithHeader(key, value string) *Error {
	if e.Header == nil {
		e.Header = http.Header{}
	}
	e.Header.Add(key, value)
	return e
}

// WithCause records the underlying error for logs.
func (e *Error) WithCause(err error) *Error { e.Err = err; return e }

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code.String(), e.Message, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Code.String(), e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// HTTPStatus is the status the error is sent with.
func (e *Error) HTTPStatus() int {
	if e.Status != 0 {
		return e.Status
	}
	if s := e.Code.Descriptor().HTTPStatusCode; s != 0 {
		return s
	}
	return http.StatusInternalServerError
}

// Unavailablef reports an outage of something Gatehouse depends on (storage, database, upstream):
// 503 UNAVAILABLE naming the failure, with the cause kept for the log.
func Unavailablef(cause error, format string, args ...any) *Error {
	return New(Unavailable, format, args...).WithCause(cause)
}

type body struct {
	Errors []wireError `json:"errors"`
}

type wireError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

// From returns err as an *Error; anything that is not one becomes 500 UNKNOWN with a generic
// message (the cause stays in Err for the log, never in the body).
func From(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Code: Unknown, Message: "internal error; the server log has the details", Status: http.StatusInternalServerError, Err: err}
}

// Write sends err as an OCI error body. HEAD requests get the status and headers only.
func Write(w http.ResponseWriter, r *http.Request, err error) *Error {
	e := From(err)
	status := e.HTTPStatus()
	for k, v := range e.Header {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Type", "application/json")
	if r.Method == http.MethodHead {
		w.WriteHeader(status)
		return e
	}
	msg := e.Message
	if msg == "" {
		msg = e.Code.Message()
	}
	b, _ := json.Marshal(body{Errors: []wireError{{Code: e.Code.String(), Message: msg, Detail: e.Detail}}})
	w.Header().Set("Content-Length", fmt.Sprint(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
	return e
}
