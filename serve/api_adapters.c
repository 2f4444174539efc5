/*
 * api_adapters.c — the adapter routes of the API: list (paginated, each page bounded in bytes),
 * import by upload (converted once to the canonical layout and checked against the base model,
 * metadata bounded) or by URL (an import job: the worker streams the file to disk within a size
 * limit), get and delete. A tenant sees only its own adapters; another tenant's is "not found".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

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
