/*
 * api_datasets.c — POST /v1/datasets/validate: an image set checked exactly as a training upload
 * is checked (the same archive reading, limits and header-only inspection, nothing decoded), but
 * answered with every file's verdict instead of a job: the usable images with their sizes, each
 * refused file with its reason, and whether the set as a whole would be accepted. The web
 * console shows this before its user submits the training. Nothing is stored.
 */
#include <string.h>

#include <jansson.h>

#include "core/utf8.h"
#include "datasets/imageset.h"
#include "serve/api_internal.h"

void fl_api_datasets_validate(fl_api *api, const char *tenant, const fl_http_request *req, fl_http_response *res) {
    (void)api;
    (void)tenant;
    /* the form has one part, the file `images`; anything else is a mistake worth naming */
    const fl_http_part *archive = NULL;
    for (size_t i = 0; i < req->n_parts; i++) {
        const fl_http_part *p = &req->parts[i];
        if (p->name && !strcmp(p->name, "images")) {
            if (archive) {
                fl_http_reply_error(res, 400, "invalid_input", "field 'images' is given twice");
                return;
            }
            archive = p;
            continue;
        }
        char shown[80];
        fl_utf8_display(p->name ? p->name : "", 64, shown, sizeof shown);
        fl_http_reply_error(res, 400, "invalid_input", "field '%s' is not taken here (only the file 'images')", shown);
        return;
    }
    if (!archive) {
        fl_http_reply_error(res, 400, "invalid_input",
                            "field 'images': the image set is required (a zip, tar or tar.gz as a multipart file)");
        return;
    }
    fl_imageset_limits limits = fl_imageset_limits_default();
    fl_imageset_report report;
    fl_error err = {0};
    const char *label = archive->filename && *archive->filename ? archive->filename : "images.zip";
    if (fl_imageset_report_memory(archive->data, archive->size, label, &limits, &report, &err) != 0) {
        fl_api_reply_err(res, &err);
        return;
    }
    json_t *images = json_array(), *rejected = json_array();
    for (size_t i = 0; i < report.n_images; i++)
        json_array_append_new(images, json_pack("{s:s, s:i, s:i}", "name", report.images[i].name, "width",
                                                report.images[i].width, "height", report.images[i].height));
    for (size_t i = 0; i < report.n_rejected; i++)
        json_array_append_new(rejected, json_pack("{s:s, s:s}", "name", report.rejected[i].name, "reason",
                                                  report.rejected[i].reason));
    json_t *o = json_pack("{s:b, s:o, s:o}", "usable", report.usable, "images", images, "rejected", rejected);
    json_object_set_new(o, "error", report.usable ? json_null()
                                                  : json_pack("{s:s, s:s}", "code",
                                                              fl_error_code_name(report.problem.code), "message",
                                                              report.problem.message));
    json_object_set_new(o, "limits", json_pack("{s:I, s:I, s:I, s:I}", "min_images", (json_int_t)limits.min_images,
                                               "max_images", (json_int_t)limits.max_images, "max_file_bytes",
                                               (json_int_t)limits.max_file_bytes, "max_pixels",
                                               (json_int_t)limits.max_pixels));
    fl_imageset_report_clear(&report);
    fl_http_reply_json(res, 200, o);
}
