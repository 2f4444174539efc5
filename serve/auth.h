/*
 * auth.h — API keys. A key is "fl_" + 40 random hex digits, shown once when created; Redis keeps
 * only its SHA-256: fl:apikey:<sha256> -> hash {tenant, label, created_ms}, and the tenant's set
 * of key hashes fl:tenant:<t>:keys. A request proves its tenant with "Authorization: Bearer KEY".
 */
#ifndef FL_SERVE_AUTH_H
#define FL_SERVE_AUTH_H
#include "serve/registry.h"
#include "core/error.h"
#include "serve/redis.h"

#define FL_API_KEY_MAX 64

/* Tenant names: 1-63 characters of [A-Za-z0-9._-]. */
int fl_auth_check_tenant_name(const char *tenant, fl_error *err);
int fl_auth_create_key(fl_redis *r, const char *tenant, const char *label, char key[FL_API_KEY_MAX], fl_error *err);
int fl_auth_revoke_key(fl_redis *r, const char *key, fl_error *err);
/* The tenant of an Authorization header value. Missing, malformed or unknown keys are FL_EINVAL
 * (HTTP 401); an unreachable Redis is FL_EUNAVAILABLE. */
int fl_auth_tenant(fl_redis *r, const char *authorization, char tenant[FL_TENANT_MAX], fl_error *err);

#endif
