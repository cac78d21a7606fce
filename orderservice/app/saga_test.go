package app_test

import (
	"os"
	"strings"
	"testing"

	"github.com/sagabox/sagabox/orderservice/app"
)

// The diagram in the README is the definition's own rendering, so it
// cannot drift from the code.
func TestReadmeShowsTheCurrentSaga(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	want := "```mermaid\n" + app.OrderSaga(nil).Mermaid() + "```"
	if !strings.Contains(string(readme), want) {
		t.Fatalf("orderservice/README.md does not show the current saga; paste:\n%s", want)
	}
}
