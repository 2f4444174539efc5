/*
 * api_adapters.c — the adapter routes of the API: list (paginated, each page bounded in bytes),
 * import by upload (converted once to the canonical layout and checked against the base model,
 * metadata bounded) or by URL (an import job: the worker streams the file to disk within a size
 * limit), get and delete, and the file itself in a chosen layout (canonical as stored; kohya and
 * PEFT converted on the way out, adapters/lora_formats.h). A tenant sees only its own adapters;
 * another tenant's is "not found".
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "adapters/lora_formats.h"
#include "core/log.h"
#include "datasets/fetch.h"
#include "serve/api_internal.h"
#include "serve/jobs.h"

json_t *fl_api_adapter_json(const fl_adapter_info *a) {
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:f, s:I, s:I}", "id", a->id, "name", a->name,
                          "trigger_word", a->trigger, "base_model", a->base_model, "sha256", a->sha256, "format",
                          a->format, "source", a->source, "rank", a->rank, "alpha", a->alpha, "bytes",
                          (json_int_t)a->bytes, "created_ms", (json_int_t)a->created_ms);
    json_object_set_new(o, "metadata", a->metadata_json ? fl_api_json_or_null(a->metadata_json) : json_object());
    return o;
}

int fl_api_find_adapter(fl_redis *r, const char *tenant, const char *id_or_name, fl_adapter_info *out, fl_error *err) {
    if (fl_registry_get(r, tenant, id_or_name, out, err) == 0) return 0;
    if (err->code != FL_ENOTFOUND && err->code != FL_EINVAL) return -1;
    if (fl_registry_lookup(r, tenant, id_or_name, out, err) == 0) return 0;
    if (err->code == FL_ENOTFOUND || err->code == FL_EINVAL)
        return fl_fail(err, FL_ENOTFOUND, "adapter '%.128s' not found", id_or_name);
    return -1;
}

void fl_api_adapters_list(fl_api *api, fl_redis *r, const char *tenant, const fl_http_request *req,
                          fl_http_response *res) {
    fl_error err = {0};
    long long offset = 0, limit = 50;
    const char *q_off = fl_http_query(req, "offset"), *q_lim = fl_http_query(req, "limit");
    char *end = NULL;
    if (q_off && ((offset = strtoll(q_off, &end, 10)) < 0 || *end))
        { fl_http_reply_error(res, 400, "invalid_input", "query 'offset': expected an integer >= 0"); return; }
    if (q_lim && ((limit = strtoll(q_lim, &end, 10)) < 1 || limit > 500 || *end))
        { fl_http_reply_error(res, 400, "invalid_input", "query 'limit': expected an integer in [1, 500]"); return; }
    fl_adapter_info *items = NULL;
    size_t n = 0, total = 0;
    /* A page ends early past --max-page-bytes (next_offset says where the rest starts). */
    if (fl_registry_list_bounded(r, tenant, (size_t)offset, (size_t)limit, api->cfg.max_page_bytes, &items, &n, &total,
                                 &err) != 0) {
        fl_api_reply_err(res, &err);
        return;
    }
    json_t *list = json_array();
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(list, fl_api_adapter_json(&items[i]));
        fl_adapter_info_clear(&items[i]);
    }
    free(items);
    json_t *o = json_pack("{s:o, s:I, s:I}", "adapters", list, "total", (json_int_t)total, "offset", (json_int_t)offset);
    size_t next = (size_t)offset + n;
    json_object_set_new(o, "next_offset", next < total ? json_integer((json_int_t)next) : json_null());
    fl_http_reply_json(res, 200, o);
}

/* An import by URL: checked now (a malformed URL, a loopback or private host, a name taken are 400
 * / 409), fetched by a worker as an import job (202); the job's result names the adapter. */
static void import_by_url(fl_api *api, fl_redis *r, const char *tenant, fl_adapter_import_request *ir,
                          fl_http_response *res) {
    fl_error err = {0};
    if (fl_fetch_check_url(ir->url, api->cfg.allow_private_urls, &err) != 0) {
        fl_fail_prefix(&err, "field 'url'");
        fl_api_reply_err(res, &err);
        return;
    }
    if (ir->name[0]) {
        fl_adapter_info taken;
        if (fl_registry_lookup(r, tenant, ir->name, &taken, &err) == 0) {
            fl_adapter_info_clear(&taken);
            fl_http_reply_error(res, 409, "conflict", "field 'name': this tenant already has an adapter named '%s'",
                                ir->name);
            return;
        }
    }
    ir->max_bytes = (int64_t)api->cfg.max_adapter_bytes;
    ir->max_metadata_bytes = (int64_t)api->cfg.max_metadata_bytes;
    json_t *job = fl_adapter_import_request_to_json(ir);
    char job_id[FL_ID_MAX];
    fl_jobs_new_id("job", job_id);
    int rc = fl_api_submit_job(api, r, FL_JOB_IMPORT, job_id, tenant, job, res);
    json_decref(job);
    if (rc == 0) fl_api_reply_accepted(res, job_id);
}

void fl_api_adapters_import(fl_api *api, fl_redis *r, const char *tenant, const fl_http_request *req,
                            fl_http_response *res) {
    fl_error err = {0};
    fl_req_source source;
    json_t *o = fl_api_request_object(req, "file", &source, &err);
    if (!o) { fl_api_reply_err(res, &err); return; }
    fl_adapter_import_request ir;
    const fl_http_part *file = fl_http_part_get(req, "file");
    fl_adapter_info info;
    memset(&info, 0, sizeof info);
    int rc = fl_adapter_import_request_decode(o, source, &ir, &err);
    json_decref(o);
    const char *name = rc == 0 && ir.name[0] ? ir.name : NULL, *trigger = rc == 0 ? ir.trigger_word : NULL;
    if (rc == 0 && !file && !ir.url)
        rc = fl_fail(&err, FL_EINVAL, "field 'file' (a multipart file) or 'url' is required");
    if (rc == 0 && file && ir.url) rc = fl_fail(&err, FL_EINVAL, "give either 'file' or 'url', not both");
    if (rc == 0 && ir.url) {
        import_by_url(api, r, tenant, &ir, res);
        fl_adapter_import_request_clear(&ir);
        return;
    }
    if (rc == 0) {
        snprintf(info.tenant, sizeof info.tenant, "%s", tenant);
        if (name) snprintf(info.name, sizeof info.name, "%s", name);
        if (trigger) snprintf(info.trigger, sizeof info.trigger, "%s", trigger);
        snprintf(info.base_model, sizeof info.base_model, "%s", api->cfg.base_model_hash);
        snprintf(info.source, sizeof info.source, "upload");
        fl_import_limits limits = fl_import_limits_default();
        limits.max_metadata_bytes = api->cfg.max_metadata_bytes;
        rc = fl_registry_import_bytes_limited(r, api->store, &api->cfg.params, file->data, file->size, &limits, &info,
                                              &err);
    }
    fl_adapter_import_request_clear(&ir);
    if (rc != 0) {
        fl_adapter_info_clear(&info);
        fl_api_reply_err(res, &err);
        return;
    }
    fl_http_reply_json(res, 201, fl_api_adapter_json(&info));
    fl_adapter_info_clear(&info);
}

void fl_api_adapters_one(fl_api *api, fl_redis *r, const char *tenant, const char *id, const fl_http_request *req,
                         fl_http_response *res) {
    fl_error err = {0};
    fl_adapter_info info;
    if (fl_api_find_adapter(r, tenant, id, &info, &err) != 0) { fl_api_reply_err(res, &err); return; }
    if (!strcmp(req->method, "GET")) {
        fl_http_reply_json(res, 200, fl_api_adapter_json(&info));
    } else if (fl_registry_delete(r, api->store, tenant, info.id, &err) != 0) {
        fl_api_reply_err(res, &err);
    } else {
        fl_http_reply_json(res, 200, json_pack("{s:s}", "deleted", info.id));
    }
    fl_adapter_info_clear(&info);
}

/* ---- the file ---------------------------------------------------------------------------------- */

/* A file streamed from an open descriptor (the stored file, or an unlinked export), closed at the end. */
typedef struct file_stream {
    int fd;
} file_stream;

static ssize_t file_stream_read(void *arg, char *buf, size_t max) {
    file_stream *fs = arg;
    for (;;) {
        ssize_t n = read(fs->fd, buf, max);
        if (n < 0 && errno == EINTR) continue;
        return n > 0 ? n : -1;
    }
}

static void file_stream_free(void *arg) {
    file_stream *fs = arg;
    close(fs->fd);
    free(fs);
}

/* The adapter's name made safe for a Content-Disposition file name: letters, digits, '.', '-' and
 * '_' kept, anything else '_'; the id when nothing is left. */
static void download_name(const fl_adapter_info *a, const char *layout, char *out, size_t cap) {
    char stem[96];
    size_t n = 0;
    for (const char *p = a->name; *p && n + 1 < sizeof stem; p++) {
        char ch = *p;
        bool keep = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
                    ch == '-' || ch == '_';
        stem[n++] = keep ? ch : '_';
    }
    stem[n] = '\0';
    snprintf(out, cap, "%s.%s.safetensors", n && stem[0] != '.' ? stem : a->id, layout);
}

void fl_api_adapters_file(fl_api *api, fl_redis *r, const char *tenant, const char *id, const fl_http_request *req,
                          fl_http_response *res) {
    fl_error err = {0};
    const char *q = fl_http_query(req, "layout");
    fl_lora_layout layout = FL_LORA_CANONICAL;
    if (q && fl_lora_layout_from_name(q, &layout) != 0) {
        fl_http_reply_error(res, 400, "invalid_input", "query 'layout': expected canonical, kohya or peft");
        return;
    }
    fl_adapter_info info;
    if (fl_api_find_adapter(r, tenant, id, &info, &err) != 0) { fl_api_reply_err(res, &err); return; }
    char stored[4400], name[160];
    download_name(&info, fl_lora_layout_name(layout), name, sizeof name);
    int rc = fl_store_locate(api->store, info.sha256, stored, sizeof stored, &err);
    fl_adapter_info_clear(&info);
    if (rc != 0) {
        fl_log_warn("download of adapter %s: %s", id, err.message);
        fl_http_reply_error(res, 404, "not_found", "the file of adapter '%.128s' is no longer stored", id);
        return;
    }
    int fd = -1;
    if (layout == FL_LORA_CANONICAL) {
        fd = open(stored, O_RDONLY | O_CLOEXEC);
    } else {
        /* Converted into a file of the uploads folder that only this descriptor keeps. */
        char tmp[4400];
        snprintf(tmp, sizeof tmp, "%s/uploads/.export-XXXXXX", api->cfg.state_dir);
        int t = mkostemp(tmp, O_CLOEXEC);
        if (t < 0) {
            fl_log_warn("download: cannot create %s: %s", tmp, strerror(errno));
            fl_http_reply_error(res, 507, "insufficient_storage", "the adapter could not be converted now; retry later");
            return;
        }
        close(t);
        if (fl_lora_convert_file(stored, layout, tmp, &err) != 0) {
            unlink(tmp);
            fl_log_warn("download of adapter %s as %s: %s", id, fl_lora_layout_name(layout), err.message);
            if (err.code == FL_ENOSPACE) fl_api_reply_err(res, &err);
            else fl_http_reply_error(res, 422, "unsupported_layout", "this adapter cannot be written in the %s layout: %s",
                                     fl_lora_layout_name(layout), err.message);
            return;
        }
        fd = open(tmp, O_RDONLY | O_CLOEXEC);
        unlink(tmp);
    }
    if (fd < 0) {
        fl_log_warn("download of adapter %s: %s", id, strerror(errno));
        fl_http_reply_error(res, 404, "not_found", "the file of adapter '%.128s' is no longer stored", id);
        return;
    }
    file_stream *fs = fl_xcalloc(1, sizeof *fs);
    fs->fd = fd;
    char disposition[200];
    snprintf(disposition, sizeof disposition, "attachment; filename=\"%s\"", name);
    res->status = 200;
    res->content_type = "application/vnd.safetensors";
    fl_http_add_header(res, "Content-Disposition", disposition);
    fl_http_add_header(res, "X-Content-Type-Options", "nosniff");
    res->stream = file_stream_read;
    res->stream_arg = fs;
    res->stream_free = file_stream_free;
}
