/*
 * auth.c — API keys stored hashed in Redis (see auth.h).
 */
#include "serve/auth.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/clock.h"
#include "core/rng.h"
#include "core/sha256.h"
#include "serve/jobs.h"

int fl_auth_check_tenant_name(const char *tenant, fl_error *err) {
    size_t n = strlen(tenant);
    if (n == 0 || n >= FL_TENANT_MAX) return fl_fail(err, FL_EINVAL, "tenant names have 1 to %d characters", FL_TENANT_MAX - 1);
    for (size_t i = 0; i < n; i++) {
        char c = tenant[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return fl_fail(err, FL_EINVAL, "tenant names use only letters, digits, '.', '_' and '-'");
    }
    return 0;
}

int fl_auth_create_key(fl_redis *r, const char *tenant, const char *label, char key[FL_API_KEY_MAX], fl_error *err) {
    if (fl_auth_check_tenant_name(tenant, err) != 0) return -1;
    fl_random_id("fl_", 20, key, FL_API_KEY_MAX);
    char hash[65], now[32];
    fl_sha256_hex(key, strlen(key), hash);
    snprintf(now, sizeof now, "%lld", (long long)fl_now_ms());
    redisReply *rep = fl_redis_cmd(r, err, "HSET fl:apikey:%s tenant %s label %s created_ms %s", hash, tenant,
                                   label ? label : "", now);
    if (!rep) return -1;
    freeReplyObject(rep);
    rep = fl_redis_cmd(r, err, "SADD fl:tenant:%s:keys %s", tenant, hash);
    if (!rep) return -1;
    freeReplyObject(rep);
    return 0;
}

/* The key itself from "Bearer KEY"; NULL if the header is not of that form. */
static const char *bearer_key(const char *authorization) {
    if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0) return NULL;
    const char *k = authorization + 7;
    while (*k == ' ') k++;
    size_t n = strlen(k);
    if (n < 8 || n >= FL_API_KEY_MAX) return NULL;
    for (size_t i = 0; i < n; i++)
        if (k[i] <= ' ' || k[i] > '~') return NULL;
    return k;
}

int fl_auth_revoke_key(fl_redis *r, const char *key, fl_error *err) {
    char hash[65];
    fl_sha256_hex(key, strlen(key), hash);
    redisReply *rep = fl_redis_cmd(r, err, "HGET fl:apikey:%s tenant", hash);
    if (!rep) return -1;
    if (rep->type != REDIS_REPLY_STRING) {
        freeReplyObject(rep);
        return fl_fail(err, FL_ENOTFOUND, "no such API key");
    }
    char tenant[FL_TENANT_MAX];
    snprintf(tenant, sizeof tenant, "%s", rep->str);
    freeReplyObject(rep);
    rep = fl_redis_cmd(r, err, "DEL fl:apikey:%s", hash);
    if (!rep) return -1;
    freeReplyObject(rep);
    rep = fl_redis_cmd(r, err, "SREM fl:tenant:%s:keys %s", tenant, hash);
    if (!rep) return -1;
    freeReplyObject(rep);
    return 0;
}

int fl_auth_tenant(fl_redis *r, const char *authorization, char tenant[FL_TENANT_MAX], fl_error *err) {
    const char *key = bearer_key(authorization);
    if (!authorization) return fl_fail(err, FL_EINVAL, "missing Authorization header (expected 'Bearer <API key>')");
    if (!key) return fl_fail(err, FL_EINVAL, "malformed Authorization header (expected 'Bearer <API key>')");
    char hash[65];
    fl_sha256_hex(key, strlen(key), hash);
    redisReply *rep = fl_redis_cmd(r, err, "HGET fl:apikey:%s tenant", hash);
    if (!rep) return -1;
    int rc = 0;
    if (rep->type == REDIS_REPLY_STRING && rep->len > 0 && rep->len < FL_TENANT_MAX)
        memcpy(tenant, rep->str, rep->len + 1);
    else
        rc = fl_fail(err, FL_EINVAL, "unknown API key");
    freeReplyObject(rep);
    return rc;
}
