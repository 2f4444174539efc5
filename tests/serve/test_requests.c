/*
 * test_requests.c — the job requests' one codec (serve/requests.h): defaults and limits, form
 * values parsed by each field's type (a numeric-looking trigger word stays a string), internal
 * fields refused from clients and accepted from storage, and the stored form read back equal.
 */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "harness.h"
#include "serve/requests.h"

static fl_request_limits limits(void) {
    fl_request_limits l = fl_request_limits_default();
    l.patch = 4;
    l.default_size = 32;
    l.max_resolution = 256;
    l.max_generation_steps = 50;
    l.max_num_images = 4;
    l.max_train_steps = 1000;
    l.max_rank = 32;
    l.max_batch_size = 8;
    return l;
}

static json_t *parse(const char *text) {
    json_error_t jerr;
    json_t *o = json_loads(text, 0, &jerr);
    FL_EXPECTF(o != NULL, "test JSON: %s", jerr.text);
    return o;
}

/* Decodes a generation request from JSON text; returns the rc and leaves err with the message. */
static int gen(const char *text, fl_req_source src, fl_generate_request *g, fl_error *err) {
    fl_request_limits l = limits();
    json_t *o = parse(text);
    int rc = fl_generate_request_decode(o, src, &l, g, err);
    json_decref(o);
    return rc;
}

static int train(const char *text, fl_req_source src, fl_train_request *t, fl_error *err) {
    fl_request_limits l = limits();
    json_t *o = parse(text);
    int rc = fl_train_request_decode(o, src, &l, t, err);
    json_decref(o);
    return rc;
}

static void test_generate_defaults_and_limits(void) {
    fl_generate_request g;
    fl_error err = {0};
    FL_EXPECTF(gen("{\"prompt\": \"a logo\"}", FL_REQ_CLIENT_JSON, &g, &err) == 0, "%s", err.message);
    FL_EXPECT(g.width == 32 && g.height == 32 && g.steps == 20 && g.num_images == 1 && g.guidance == 1.0);
    FL_EXPECT(g.seed >= 0 && g.seed < FL_REQ_MAX_SEED && g.n_adapters == 0 && !g.sync);
    fl_generate_request_clear(&g);

    struct {
        const char *body, *needle;
    } bad[] = {
        {"{}", "field 'prompt' is required"},
        {"{\"prompt\": 3}", "field 'prompt': expected a string"},
        {"{\"prompt\": \"x\", \"width\": 30}", "field 'width': must be a multiple of 4"},
        {"{\"prompt\": \"x\", \"width\": 512}", "field 'width': expected an integer in [4, 256]"},
        {"{\"prompt\": \"x\", \"steps\": 2.5}", "field 'steps'"},
        {"{\"prompt\": \"x\", \"num_images\": 5}", "field 'num_images'"},
        {"{\"prompt\": \"x\", \"seed\": -1}", "field 'seed'"},
        {"{\"prompt\": \"x\", \"colour\": 1}", "field 'colour' is not known"},
        {"{\"prompt\": \"x\", \"max_text_tokens\": 8}", "field 'max_text_tokens' is not known"},
        {"{\"prompt\": \"x\", \"adapters\": [{\"id\": \"a\", \"sha256\": \"00\"}]}", "sha256"},
        {"{\"prompt\": \"x\", \"adapters\": [{\"id\": \"a\", \"scale\": 9}]}", "field 'adapters[0].scale'"},
        {"{\"prompt\": \"x\", \"adapters\": {\"id\": \"a\"}}", "field 'adapters': expected an array"},
        {"{\"prompt\": \"x\", \"adapters\": [{\"id\": \"\"}]}", "field 'adapters[0]'"},
        {"{\"prompt\": \"x\", \"sync\": \"yes\"}", "field 'sync': expected true or false"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&err, 0, sizeof err);
        int rc = gen(bad[i].body, FL_REQ_CLIENT_JSON, &g, &err);
        FL_EXPECTF(rc != 0 && err.code == FL_EINVAL && strstr(err.message, bad[i].needle), "%s -> rc %d, %s",
                   bad[i].body, rc, err.message);
        fl_generate_request_clear(&g);
    }
}

static void test_nine_adapters_is_a_bad_request(void) {
    char body[1024] = "{\"prompt\": \"x\", \"adapters\": [";
    for (int i = 0; i < 9; i++) {
        char one[32];
        snprintf(one, sizeof one, "%s{\"id\": \"a%d\"}", i ? ", " : "", i);
        strcat(body, one);
    }
    strcat(body, "]}");
    fl_generate_request g;
    fl_error err = {0};
    FL_EXPECT(gen(body, FL_REQ_CLIENT_JSON, &g, &err) != 0 && err.code == FL_EINVAL && strstr(err.message, "at most 8"));
    fl_generate_request_clear(&g);
}

static void test_generate_round_trip(void) {
    fl_generate_request g;
    fl_error err = {0};
    FL_EXPECTF(gen("{\"prompt\": \"a mug, sks\", \"width\": 64, \"height\": 16, \"steps\": 7, \"seed\": 9007199254740992,"
                   " \"guidance\": 3.5, \"num_images\": 2, \"sync\": true,"
                   " \"adapters\": [{\"id\": \"logo\", \"scale\": -0.5}, {\"id\": \"style\"}]}",
                   FL_REQ_CLIENT_JSON, &g, &err) == 0,
               "%s", err.message);
    FL_EXPECT(g.sync && g.n_adapters == 2 && g.adapters[0].scale == -0.5 && g.adapters[1].scale == 1.0);
    memset(g.adapters[0].sha256, 'a', 64);
    memset(g.adapters[1].sha256, 'b', 64);
    g.max_text_tokens = 32;
    json_t *stored = fl_generate_request_to_json(&g);
    char *text = json_dumps(stored, JSON_COMPACT);
    json_decref(stored);
    FL_EXPECT(strstr(text, "sync") == NULL); /* not part of the job */
    fl_generate_request back;
    FL_EXPECTF(fl_generate_request_parse(text, &back, &err) == 0, "%s", err.message);
    FL_EXPECT(!strcmp(back.prompt, g.prompt) && back.width == 64 && back.height == 16 && back.steps == 7 &&
              back.seed == g.seed && back.guidance == 3.5 && back.num_images == 2 && back.max_text_tokens == 32 &&
              back.n_adapters == 2 && !strcmp(back.adapters[0].id, "logo") && back.adapters[0].scale == -0.5 &&
              !strcmp(back.adapters[1].sha256, g.adapters[1].sha256));
    free(text);
    fl_generate_request_clear(&back);
    fl_generate_request_clear(&g);
    FL_EXPECT(fl_generate_request_parse("not json", &back, &err) != 0 && err.code == FL_EINVAL);
    fl_generate_request_clear(&back);
    FL_EXPECT(fl_generate_request_parse("{\"prompt\": \"x\", \"max_text_tokens\": 8}", &back, &err) != 0 &&
              strstr(err.message, "'seed' is required"));
    fl_generate_request_clear(&back);
}

static void test_form_values_take_the_field_type(void) {
    fl_train_request t;
    fl_error err = {0};
    /* multipart values are strings: a trigger word that looks like a number stays a word, numbers parse */
    FL_EXPECTF(train("{\"trigger_word\": \"2024\", \"steps\": \"40\", \"learning_rate\": \"0.001\", \"is_style\": \"true\","
                     " \"name\": \"acme 2024\", \"seed\": \"12\"}",
                     FL_REQ_CLIENT_FORM, &t, &err) == 0,
               "%s", err.message);
    FL_EXPECT(!strcmp(t.trigger_word, "2024") && t.steps == 40 && t.learning_rate == 0.001 && t.is_style &&
              !strcmp(t.name, "acme 2024") && t.seed == 12 && t.rank == 16 && t.alpha == 16.0 && t.resolution == 32);
    fl_train_request_clear(&t);
    const char *bad[] = {
        "{\"trigger_word\": \"sks\", \"steps\": \"0x10\"}",  "{\"trigger_word\": \"sks\", \"steps\": \"nan\"}",
        "{\"trigger_word\": \"sks\", \"steps\": \"40 \"}",   "{\"trigger_word\": \"sks\", \"buckets\": \"maybe\"}",
        "{\"trigger_word\": \"two words\"}",                 "{\"trigger_word\": \"sks\", \"name\": \"trigger:x\"}",
        "{\"trigger_word\": \"sks\", \"images\": \"/etc/passwd\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&err, 0, sizeof err);
        FL_EXPECTF(train(bad[i], FL_REQ_CLIENT_FORM, &t, &err) != 0 && err.code == FL_EINVAL, "%s accepted", bad[i]);
        fl_train_request_clear(&t);
    }
    /* from a JSON body a number where a string is expected is refused, not converted */
    FL_EXPECT(train("{\"trigger_word\": 2024}", FL_REQ_CLIENT_JSON, &t, &err) != 0 &&
              strstr(err.message, "field 'trigger_word': expected a string"));
    fl_train_request_clear(&t);
    FL_EXPECT(train("{\"trigger_word\": \"sks\", \"steps\": \"40\"}", FL_REQ_CLIENT_JSON, &t, &err) != 0 &&
              strstr(err.message, "field 'steps'"));
    fl_train_request_clear(&t);
    FL_EXPECT(train("{\"trigger_word\": \"sks\", \"images_url\": \"file:///etc/passwd\"}", FL_REQ_CLIENT_JSON, &t,
                    &err) != 0 &&
              strstr(err.message, "only http and https"));
    fl_train_request_clear(&t);
}

static void test_train_round_trip(void) {
    fl_train_request t;
    fl_error err = {0};
    FL_EXPECTF(train("{\"trigger_word\": \"sks\", \"images_url\": \"https://example.com/set.zip\", \"rank\": 8,"
                     " \"alpha\": 4, \"caption\": \"a [trigger] mug\", \"targets\": \"attention\", \"buckets\": true}",
                     FL_REQ_CLIENT_JSON, &t, &err) == 0,
               "%s", err.message);
    FL_EXPECT(t.images && !strcmp(t.images, "https://example.com/set.zip") && !strcmp(t.source, t.images));
    json_t *stored = fl_train_request_to_json(&t);
    char *text = json_dumps(stored, JSON_COMPACT);
    json_decref(stored);
    fl_train_request back;
    FL_EXPECTF(fl_train_request_parse(text, &back, &err) == 0, "%s", err.message);
    FL_EXPECT(!strcmp(back.images, t.images) && !strcmp(back.source, t.source) && back.rank == 8 && back.alpha == 4.0 &&
              !strcmp(back.caption, "a [trigger] mug") && !strcmp(back.targets, "attention") && back.buckets &&
              !strcmp(back.trigger_word, "sks") && back.name[0] == '\0');
    free(text);
    fl_train_request_clear(&back);
    fl_train_request_clear(&t);
}

int main(void) {
    FL_RUN(test_generate_defaults_and_limits);
    FL_RUN(test_nine_adapters_is_a_bad_request);
    FL_RUN(test_generate_round_trip);
    FL_RUN(test_form_values_take_the_field_type);
    FL_RUN(test_train_round_trip);
    return fl_test_finish();
}
