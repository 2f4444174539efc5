/*
 * test_captions.c — trigger-word substitution and insertion for subject adapters, clean
 * placeholder removal for style adapters, defaults, and caption dropout draws.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "datasets/captions.h"
#include "harness.h"

static void expect_caption(int line, const char *raw, const char *trigger, const char *def, bool style, const char *want) {
    char *got = fl_caption_resolve(raw, trigger, def, style);
    if (!got || strcmp(got, want) != 0)
        fl_test_fail_at(__FILE__, line, "resolve(\"%s\", \"%s\", %s) = \"%s\", want \"%s\"", raw ? raw : "(null)",
                        trigger ? trigger : "(null)", style ? "style" : "subject", got ? got : "(null)", want);
    free(got);
}

#define EXPECT_CAPTION(raw, trigger, def, style, want) expect_caption(__LINE__, raw, trigger, def, style, want)

static void test_subject_captions(void) {
    EXPECT_CAPTION(NULL, "sks", "a photo of [trigger]", false, "a photo of sks");
    EXPECT_CAPTION(NULL, "sks", NULL, false, "a photo of sks");
    EXPECT_CAPTION(" \t\n", "sks", "a photo of [trigger]", false, "a photo of sks");
    EXPECT_CAPTION("a red [trigger] logo on white", "acme", NULL, false, "a red acme logo on white");
    EXPECT_CAPTION("[trigger] [trigger] twice", "x", NULL, false, "x x twice");
    EXPECT_CAPTION("[trigger]", "sks", NULL, false, "sks");
    EXPECT_CAPTION("a red logo", "acme", NULL, false, "acme, a red logo");
    EXPECT_CAPTION("  a logo  ", "acme", NULL, false, "acme, a logo");
    EXPECT_CAPTION("acme logo, red", "acme", NULL, false, "acme logo, red");
    EXPECT_CAPTION("the logo of acme.", "acme", NULL, false, "the logo of acme.");
    EXPECT_CAPTION("acmecorp logo", "acme", NULL, false, "acme, acmecorp logo");
    EXPECT_CAPTION("my_acme logo", "acme", NULL, false, "acme, my_acme logo");
    EXPECT_CAPTION("the ACME logo", "acme", NULL, false, "acme, the ACME logo");
    EXPECT_CAPTION("an acme bot waving", "acme bot", NULL, false, "an acme bot waving");
    EXPECT_CAPTION("a café sign", "café", NULL, false, "a café sign");
    EXPECT_CAPTION("two cafés", "café", NULL, false, "café, two cafés");
    EXPECT_CAPTION(NULL, "sks", "a logo", false, "sks, a logo");
    EXPECT_CAPTION("", "sks", "", false, "sks");
    EXPECT_CAPTION(NULL, " sks ", NULL, false, "a photo of sks");
}

static void test_style_captions(void) {
    EXPECT_CAPTION("a painting in [trigger] style, blue", "sks", NULL, true, "a painting in style, blue");
    EXPECT_CAPTION("[trigger], a red car", "sks", NULL, true, "a red car");
    EXPECT_CAPTION("portrait, [trigger]", "sks", NULL, true, "portrait");
    EXPECT_CAPTION("a [trigger] , [trigger] logo", "sks", NULL, true, "a, logo");
    EXPECT_CAPTION("a [trigger]. done", "sks", NULL, true, "a. done");
    EXPECT_CAPTION(NULL, "sks", NULL, true, "a photo of");
    EXPECT_CAPTION("sks style", "sks", NULL, true, "sks style");
    EXPECT_CAPTION("a red car", "sks", NULL, true, "a red car");
    /* No trigger word: removal as for styles, and nothing inserted. */
    EXPECT_CAPTION("a photo of [trigger]", "", NULL, false, "a photo of");
    EXPECT_CAPTION("[trigger] on a table", NULL, NULL, false, "on a table");
    EXPECT_CAPTION("[trigger]", NULL, NULL, false, "");
}

static void test_dropout(void) {
    fl_rng rng, twin;
    fl_rng_seed(&rng, 7);
    int hits = 0;
    for (int i = 0; i < 1000; i++) hits += fl_caption_dropout(&rng, 0.0f);
    FL_EXPECT(hits == 0);
    hits = 0;
    for (int i = 0; i < 1000; i++) hits += fl_caption_dropout(&rng, 1.0f);
    FL_EXPECT(hits == 1000);
    hits = 0;
    for (int i = 0; i < 20000; i++) hits += fl_caption_dropout(&rng, 0.25f);
    FL_EXPECTF(hits > 4600 && hits < 5400, "%d of 20000 at p = 0.25", hits);
    FL_EXPECT(!fl_caption_dropout(&rng, NAN) && !fl_caption_dropout(&rng, -1.0f));
    FL_EXPECT(fl_caption_dropout(&rng, 2.0f));

    /* One draw per call, whatever p is. */
    fl_rng_seed(&rng, 99);
    fl_rng_seed(&twin, 99);
    fl_caption_dropout(&rng, 0.0f);
    fl_caption_dropout(&rng, 1.0f);
    fl_caption_dropout(&rng, 0.5f);
    for (int i = 0; i < 3; i++) fl_rng_next(&twin);
    FL_EXPECT(fl_rng_next(&rng) == fl_rng_next(&twin));

    /* Same seed, same decisions. */
    fl_rng_seed(&rng, 5);
    fl_rng_seed(&twin, 5);
    bool same = true;
    for (int i = 0; i < 100; i++) same &= fl_caption_dropout(&rng, 0.3f) == fl_caption_dropout(&twin, 0.3f);
    FL_EXPECT(same);
}

int main(void) {
    FL_RUN(test_subject_captions);
    FL_RUN(test_style_captions);
    FL_RUN(test_dropout);
    return fl_test_finish();
}
