package spacer

import (
	"os"
	"strings"
	"testing"
)

// The README's "From Go" example is example_test.go, word for word, so
// that it compiles and runs (against the test broker) with the tests.
func TestReadmeExampleIsExampleTest(t *testing.T) {
	readme, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## From Go\n")
	if !ok {
		t.Fatal(`README.md has no "## From Go" section`)
	}
	_, block, ok := strings.Cut(section, "\n```go\n")
	block, _, closed := strings.Cut(block, "\n```\n")
	if !ok || !closed {
		t.Fatal(`the "From Go" section has no go block`)
	}
	if block+"\n" != string(example) {
		t.Errorf("the README's Go example differs from clients/go/spacer/example_test.go:\n%s", block)
	}
}
