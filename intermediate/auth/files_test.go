package auth

import "testing"

func TestFilesCheck(t *testing.T) {
	for _, tc := range []struct {
		f       Files
		enabled bool
		want    string
	}{
		{Files{}, false, ""},
		{Files{"c", "k", "a"}, true, ""},
		{Files{Cert: "c"}, false, "TLS is partly configured: tls-cert is set, tls-key and tls-ca are not; set all three or none"},
		{Files{Key: "k"}, false, "TLS is partly configured: tls-key is set, tls-cert and tls-ca are not; set all three or none"},
		{Files{CA: "a"}, false, "TLS is partly configured: tls-ca is set, tls-cert and tls-key are not; set all three or none"},
		{Files{Cert: "c", Key: "k"}, false, "TLS is partly configured: tls-cert and tls-key are set, tls-ca is not; set all three or none"},
		{Files{Cert: "c", CA: "a"}, false, "TLS is partly configured: tls-cert and tls-ca are set, tls-key is not; set all three or none"},
		{Files{Key: "k", CA: "a"}, false, "TLS is partly configured: tls-key and tls-ca are set, tls-cert is not; set all three or none"},
	} {
		if got := tc.f.Enabled(); got != tc.enabled {
			t.Errorf("%+v.Enabled() = %v", tc.f, got)
		}
		err := tc.f.Check()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v.Check() = %v, want nil", tc.f, err)
		case tc.want != "" && (err == nil || err.Error() != tc.want):
			t.Errorf("%+v.Check() = %v, want %q", tc.f, err, tc.want)
		}
	}
}
