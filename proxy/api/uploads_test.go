package api

import "testing"

func TestParseContentRange(t *testing.T) {
	tests := []struct {
		in         string
		start, end int64
		ok         bool
	}{
		{"0-99", 0, 99, true},
		{"100-199", 100, 199, true},
		{"bytes 0-9/10", 0, 9, true},
		{"bytes=5-9", 5, 9, true},
		{"9-5", 0, 0, false},
		{"-5", 0, 0, false},
		{"a-b", 0, 0, false},
		{"10", 0, 0, false},
	}
	for _, tt := range tests {
		s, e, err := parseContentRange(tt.in)
		if (err == nil) != tt.ok || (tt.ok && (s != tt.start || e != tt.end)) {
			t.Errorf("parseContentRange(%q) = %d, %d, %v", tt.in, s, e, err)
		}
	}
}
