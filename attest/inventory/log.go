package inventory

import (
	"fmt"
	"log/slog"
	"strings"

	scalibrlog "github.com/google/osv-scalibr/log"
)

// SetLogger routes osv-scalibr's log lines into l: its warnings and errors as warnings, the
// rest as debug (it is chatty).
func SetLogger(l *slog.Logger) { scalibrlog.SetLogger(slogAdapter{l}) }

func init() { SetLogger(slog.New(slog.DiscardHandler)) }

type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Errorf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if strings.Contains(msg, "reached max zip depth") { // javaArchive opens nested archives itself
		a.l.Debug("osv-scalibr: " + msg)
		return
	}
	a.l.Warn("osv-scalibr: " + msg)
}
func (a slogAdapter) Warnf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if strings.HasPrefix(msg, "Disabling plugin") { // Windows-only plugins on a Linux image: expected
		a.l.Debug("osv-scalibr: " + msg)
		return
	}
	a.l.Warn("osv-scalibr: " + msg)
}
func (a slogAdapter) Infof(format string, args ...any) {
	a.l.Debug("osv-scalibr: " + fmt.Sprintf(format, args...))
}
func (a slogAdapter) Debugf(format string, args ...any) {
	a.l.Debug("osv-scalibr: " + fmt.Sprintf(format, args...))
}
func (a slogAdapter) Error(args ...any) { a.l.Warn("osv-scalibr: " + fmt.Sprint(args...)) }
func (a slogAdapter) Warn(args ...any)  { a.l.Warn("osv-scalibr: " + fmt.Sprint(args...)) }
func (a slogAdapter) Info(args ...any)  { a.l.Debug("osv-scalibr: " + fmt.Sprint(args...)) }
func (a slogAdapter) Debug(args ...any) { a.l.Debug("osv-scalibr: " + fmt.Sprint(args...)) }
