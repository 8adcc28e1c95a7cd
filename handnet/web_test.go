package handnet_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/handnet/handnet/handnet"
)

// chromium finds Debian's chromium (make test installs it); without it the
// test fails in CI and is skipped elsewhere.
func chromium(t *testing.T) string {
	for _, p := range []string{os.Getenv("HANDNET_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if p != "" {
			if _, err := exec.LookPath(p); err == nil {
				return p
			}
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is missing: `make test` installs Debian's chromium")
	}
	t.Skip("chromium is missing: apt-get install chromium (make test does)")
	return ""
}

// TestWebPageInBrowser drives the page at / in headless Chromium: it
// uploads a hand photo, waits for the bars, and checks that the top class
// shown is handnet predict's and that the Grad-CAM overlay loaded; a second
// photo replaces the first.
func TestWebPageInBrowser(t *testing.T) {
	exe := chromium(t)
	c, hs, logs := newTestServer(t, handnet.ServerOptions{})
	photos := []string{filepath.Join(realSample, "Hand_0000033.jpg"), filepath.Join(realSample, "Hand_0004729.jpg")}
	if _, err := os.Stat(photos[0]); err != nil { // no real sample here: drawn hands
		dir := t.TempDir()
		for i, b := range realSizeJPEGs(t, 2) {
			photos[i] = filepath.Join(dir, []string{"first.jpg", "second.jpg"}[i])
			os.WriteFile(photos[i], b, 0o644)
		}
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-quic", true), chromedp.Flag("no-first-run", true))
	alloc, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(alloc)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(hs.URL)); err != nil {
		t.Fatal("navigate:", err)
	}

	for i, photo := range photos {
		want, err := c.PredictFile(photo)
		if err != nil {
			t.Fatal(err)
		}
		abs, err := filepath.Abs(photo)
		if err != nil {
			t.Fatal(err)
		}
		done := `document.getElementById("status").textContent.startsWith(` + quoteJS(filepath.Base(photo)+": ") + `) && document.body.dataset.state === "done"`
		err = chromedp.Do(ctx,
			chromedp.SetUploadFiles("#file", []string{abs}), // the browser reads it: an absolute path
			chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
				_, err := chromedp.Poll[bool](done, chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(30*time.Second))(ctx, tg)
				return err
			}))
		if err != nil {
			t.Fatalf("photo %d (%s): %v\nserver log:\n%s", i+1, filepath.Base(photo), err, logs.String())
		}
		top, err := chromedp.Run(ctx, chromedp.AttributeValue("#top", "data-class"))
		if err != nil {
			t.Fatal(err)
		}
		status, _ := chromedp.Run(ctx, chromedp.Text("#status"))
		bars, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#bars .bar").length`))
		overlayWidth, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`document.getElementById("overlay").naturalWidth`))
		shot, _ := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if out := os.Getenv("HANDNET_SCREENSHOT"); out != "" {
			os.WriteFile(strings.Replace(out, ".png", "", 1)+"-"+string(rune('1'+i))+".png", shot, 0o644)
		}
		t.Logf("photo %d: page shows %q (%s), %d bars, overlay %d px wide; predict says %s %.3f", i+1, top.Value, status, bars, overlayWidth, want.Class, want.Probability)
		if top.Value != want.Class {
			t.Errorf("photo %d: the page shows %q, handnet predict says %q", i+1, top.Value, want.Class)
		}
		if bars != len(c.Classes()) || overlayWidth <= 0 {
			t.Errorf("photo %d: %d bars (want %d), overlay width %d", i+1, bars, len(c.Classes()), overlayWidth)
		}
	}
	checkPageExtras(ctx, t, c, hs.URL, logs)
}

// checkPageExtras: the page names the model's training data from its
// header, offers a copyable curl line for this server, explains the class
// chosen in its picker (the API's ?class=) and classifies an example photo
// at a click.
func checkPageExtras(ctx context.Context, t *testing.T, c *handnet.Classifier, url string, logs fmt.Stringer) {
	t.Helper()
	text := func(sel string) string {
		s, err := chromedp.Run(ctx, chromedp.Text(sel))
		if err != nil {
			t.Fatalf("%s: %v", sel, err)
		}
		return s
	}
	if got, want := text("#curl"), "curl -F image=@photo.jpg '"+url+"/predict?top=3'"; got != want {
		t.Errorf("curl line %q, want %q", got, want)
	}
	if got := text("#trained"); !strings.Contains(got, "Trained on testdata/synthetic-hands.") || !strings.Contains(got, "synthetic hands") {
		t.Errorf("training data line %q, want the checkpoint's data named", got)
	}
	wait := func(what, cond string) {
		t.Helper()
		err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := chromedp.Poll[bool](cond, chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(30*time.Second))(ctx, tg)
			return err
		}))
		if err != nil {
			t.Fatalf("%s: %v\nserver log:\n%s", what, err, logs.String())
		}
	}
	classes := c.Classes()
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`(() => { const s = document.getElementById("class"); s.value = "3"; s.dispatchEvent(new Event("change")); return true })()`)); err != nil {
		t.Fatal(err)
	}
	wait("explaining class 3", `document.body.dataset.state === "done" && document.getElementById("explained").textContent === `+quoteJS(classes[3]))
	if opts, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#class option").length`)); opts != len(classes)+1 {
		t.Errorf("class picker has %d options, want %d classes + predicted", opts, len(classes))
	}
	shot, _ := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if out := os.Getenv("HANDNET_SCREENSHOT"); out != "" {
		os.WriteFile(strings.Replace(out, ".png", "", 1)+"-class.png", shot, 0o644)
	}
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`(() => { document.getElementById("class").value = ""; document.body.dataset.state = "idle"; document.querySelector("#examples button").click(); return true })()`)); err != nil {
		t.Fatal(err)
	}
	wait("the first example", `document.body.dataset.state === "done" && document.getElementById("status").textContent.startsWith("female-dorsal-left.jpg: ")`)
	thumbs, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`[...document.querySelectorAll("#examples img")].filter((i) => i.naturalWidth > 0).length`))
	if thumbs != 3 {
		t.Errorf("%d example thumbnails loaded, want 3", thumbs)
	}
	shot, _ = chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if out := os.Getenv("HANDNET_SCREENSHOT"); out != "" {
		os.WriteFile(strings.Replace(out, ".png", "", 1)+"-example.png", shot, 0o644)
	}
}

func quoteJS(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}
