/*
 * image.c — fl_image storage and the hardened decoder (stb_image, compiled into this file).
 *
 * stb_image is built here from the libstb-dev header rather than taken from libstb's shared
 * library, so it can be configured for untrusted input: only the PNG, JPEG, BMP and GIF decoders
 * are compiled, nothing touches files, asserts never abort, and every allocation it makes goes
 * through a capped allocator. The cap (per decode, per thread) is sized from the dimensions that
 * were already checked against the caller's limits, so a corrupt file that inflates without end
 * (a 20 KB PNG whose IDAT expands to gigabytes) fails with "outofmem" instead of exhausting memory.
 */
#include "datasets/image.h"

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "fl_build_config.h"

int fl_image_init(fl_image *img, int width, int height, fl_error *err) {
    memset(img, 0, sizeof *img);
    if (width <= 0 || height <= 0) return fl_fail(err, FL_EINVAL, "image size %dx%d is not positive", width, height);
    size_t count = (size_t)width * (size_t)height;
    if (count > SIZE_MAX / (3 * sizeof(float)))
        return fl_fail(err, FL_EINVAL, "image size %dx%d is too large", width, height);
    img->pixels = calloc(count * 3, sizeof(float));
    if (!img->pixels) return fl_fail(err, FL_ENOMEM, "not enough memory for a %dx%d image", width, height);
    img->width = width;
    img->height = height;
    return 0;
}

void fl_image_release(fl_image *img) {
    if (!img) return;
    free(img->pixels);
    memset(img, 0, sizeof *img);
}

const char *fl_image_sniff(const void *bytes, size_t n, int *decodable) {
    const unsigned char *b = bytes;
    int ok = 0;
    const char *name = NULL;
    if (n >= 8 && memcmp(b, "\x89PNG\r\n\x1a\n", 8) == 0) name = "PNG", ok = 1;
    else if (n >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) name = "JPEG", ok = 1;
    else if (n >= 6 && (memcmp(b, "GIF87a", 6) == 0 || memcmp(b, "GIF89a", 6) == 0)) name = "GIF", ok = 1;
    else if (n >= 2 && b[0] == 'B' && b[1] == 'M') name = "BMP", ok = 1;
    else if (n >= 12 && memcmp(b, "RIFF", 4) == 0 && memcmp(b + 8, "WEBP", 4) == 0) name = "WebP";
    else if (n >= 12 && memcmp(b + 4, "ftyp", 4) == 0) name = "HEIC/AVIF";
    else if (n >= 4 && (memcmp(b, "II*\0", 4) == 0 || memcmp(b, "MM\0*", 4) == 0)) name = "TIFF";
    else if (n >= 4 && memcmp(b, "%PDF", 4) == 0) name = "PDF";
    else if (n >= 4 && memcmp(b, "8BPS", 4) == 0) name = "PSD";
    else if (n >= 4 && (memcmp(b, "<svg", 4) == 0 || memcmp(b, "<?xm", 4) == 0)) name = "SVG";
    else if (n >= 2 && b[0] == 0xFF && b[1] == 0x0A) name = "JPEG XL";
    else if (n >= 4 && memcmp(b, "\0\0\1\0", 4) == 0) name = "ICO";
    else if (n >= 4 && memcmp(b, "PK\3\4", 4) == 0) name = "zip archive";
    if (decodable) *decodable = ok;
    return name;
}

int fl_image_check_size(int width, int height, int64_t max_pixels, int max_side, fl_error *err) {
    if (width <= 0 || height <= 0) return fl_fail(err, FL_EINVAL, "truncated or corrupt image (zero size)");
    if ((int64_t)width * height > max_pixels) {
        if (max_pixels % 1000000 == 0)
            return fl_fail(err, FL_ELIMIT, "%dx%d exceeds the %lld MP limit", width, height,
                           (long long)(max_pixels / 1000000));
        return fl_fail(err, FL_ELIMIT, "%dx%d exceeds the %lld-pixel limit", width, height, (long long)max_pixels);
    }
    if (width > max_side || height > max_side)
        return fl_fail(err, FL_ELIMIT, "%dx%d exceeds the %d-pixel side limit", width, height, max_side);
    return 0;
}

#if defined(FL_HAVE_STB)

/* ---- the capped allocator stb_image runs under ------------------------------------------------ */

typedef union stb_block {
    max_align_t align;
    size_t size;
} stb_block;

static _Thread_local size_t stb_cap;  /* bytes stb may hold at once during this call */
static _Thread_local size_t stb_live; /* bytes it holds now */

static void *stb_capped_malloc(size_t size) {
    if (size > stb_cap || stb_live > stb_cap - size) return NULL;
    stb_block *blk = malloc(sizeof(stb_block) + size);
    if (!blk) return NULL;
    blk->size = size;
    stb_live += size;
    return blk + 1;
}

static void stb_capped_free(void *ptr) {
    if (!ptr) return;
    stb_block *blk = (stb_block *)ptr - 1;
    stb_live -= blk->size;
    free(blk);
}

static void *stb_capped_realloc(void *ptr, size_t size) {
    if (!ptr) return stb_capped_malloc(size);
    stb_block *blk = (stb_block *)ptr - 1;
    size_t old = blk->size;
    if (size > old && (size - old > stb_cap || stb_live > stb_cap - (size - old))) return NULL;
    stb_block *grown = realloc(blk, sizeof(stb_block) + size);
    if (!grown) return NULL;
    stb_live = stb_live - old + size;
    grown->size = size;
    return grown + 1;
}

#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#define STBI_ONLY_GIF
#define STBI_NO_STDIO
#define STBI_NO_HDR
#define STBI_NO_LINEAR
/* Malformed input must never abort the process: stb's asserts behave as in a release build. */
#define STBI_ASSERT(x) ((void)0)
#define STBI_MALLOC(size) stb_capped_malloc(size)
#define STBI_REALLOC(ptr, size) stb_capped_realloc(ptr, size)
#define STBI_FREE(ptr) stb_capped_free(ptr)
/* stb defines API functions this file does not call; the warning for one of them is raised at the
 * end of the translation unit, so it stays off for the rest of this file. */
#pragma GCC diagnostic ignored "-Wunused-function"
#include <stb_image.h>

enum { STB_SLACK = 16 << 20 };

/* Per-pixel bytes stb may hold while decoding: a 16-bit RGBA PNG keeps the inflated scanlines
 * (8 B/px) and the unfiltered image (8 B/px) at once, then an 8-bit copy (4 B/px); progressive
 * JPEG keeps coefficients and planes. 24 covers every legitimate path with room to spare. */
static void stb_budget_begin(int64_t pixels, size_t file_bytes) {
    stb_live = 0;
    stb_cap = (size_t)pixels * 24 + 2 * file_bytes + STB_SLACK;
}

static void stb_budget_end(void) {
    stb_cap = 0;
}

/* stb_image 2.27 (Debian's libstb-dev) trusts JPEG Huffman tables too far: it builds a table
 * listing more than 256 symbols by writing past the table's arrays, and it decodes a scan with a
 * table that was never defined (reading uninitialised memory and indexing out of bounds). This
 * walks the markers the way stb reads them (segments by their length, any bytes up to the next
 * 0xFF skipped, bytes past the end read as 0, a DHT table read even when it runs past its
 * segment) and refuses a file in which a DHT table stb could reach has more than 256 symbols or a
 * scan uses a table not defined before it. Past the first scan it looks at every marker, which is
 * more than stb does. */
static unsigned char byte_at(const unsigned char *b, size_t n, size_t i) {
    return i < n ? b[i] : 0;
}

static bool jpeg_tables_ok(const unsigned char *b, size_t n) {
    bool defined[2][4] = {{false}}; /* [DC, AC][table id] */
    size_t pos = 2;
    while (pos + 1 < n) {
        if (b[pos] != 0xFF) { /* entropy-coded data or padding: find the next marker */
            pos++;
            continue;
        }
        unsigned char m = b[pos + 1];
        if (m == 0x00 || m == 0xFF || (m >= 0xD0 && m <= 0xD8) || m == 0x01) { /* stuffing, fill, RSTn, SOI, TEM */
            pos += m == 0xFF ? 1 : 2;
            continue;
        }
        if (m == 0xD9) return true; /* EOI */
        size_t len = (size_t)byte_at(b, n, pos + 2) << 8 | byte_at(b, n, pos + 3);
        if (m == 0xC4 && len >= 2) { /* DHT */
            size_t p = pos + 4, end = pos + 2 + len;
            while (p < end && p < n) { /* past the data every count reads as 0 */
                unsigned q = b[p];
                if ((q >> 4) > 1 || (q & 15) > 3) return true; /* stb refuses the file */
                size_t symbols = 0;
                for (size_t i = 1; i <= 16; i++) symbols += byte_at(b, n, p + i);
                if (symbols > 256) return false;
                defined[q >> 4][q & 15] = true;
                p += 17 + symbols;
            }
        }
        if (m == 0xDA) { /* SOS: every table the scan decodes with must exist */
            size_t count = byte_at(b, n, pos + 4);
            unsigned ss = byte_at(b, n, pos + 5 + 2 * count), se = byte_at(b, n, pos + 6 + 2 * count);
            for (size_t i = 0; i < count; i++) {
                unsigned t = byte_at(b, n, pos + 6 + 2 * i), dc = t >> 4, ac = t & 15;
                if (ss == 0 && dc <= 3 && !defined[0][dc]) return false;
                if (se > 0 && ac <= 3 && !defined[1][ac]) return false;
            }
        }
        if (len < 2 || pos + 2 + len > n) return true; /* stb stops here */
        pos += 2 + len;
    }
    return true;
}

/* stb_image 2.27 offsets a null buffer when the first IDAT chunk is empty (harmless in practice,
 * undefined all the same); no encoder writes that, so such a file is refused. */
static bool png_chunks_ok(const unsigned char *b, size_t n) {
    for (size_t pos = 8; pos + 8 <= n;) {
        size_t len = (size_t)b[pos] << 24 | (size_t)b[pos + 1] << 16 | (size_t)b[pos + 2] << 8 | b[pos + 3];
        if (memcmp(b + pos + 4, "IDAT", 4) == 0) return len > 0;
        if (len > n - pos - 8) return true; /* truncated: stb reports it */
        pos += 12 + len;
    }
    return true;
}

/* ---- does the file hold the pixels its header claims? ------------------------------------------- */

/* A file that claims a large image but holds too few bytes for it (cut short, or crafted) is
 * refused here, from its structure alone, before a decoder sizes buffers by the claim. Each
 * format's floor is a hard limit of its coding, not a guess:
 *   PNG   every chunk complete through IEND; the IDAT bytes at least the raw scanlines / 1032
 *         (deflate's largest expansion: a 258-byte match costs at least 2 bits)
 *   JPEG  an EOI marker after a scan, segments complete; at least 1 bit per 8x8 block (a block
 *         needs its DC code, at least 1 bit)
 *   BMP   the header's pixel offset plus |height| rows of the uncompressed row stride
 *   GIF   the first image's data sub-blocks complete through their terminator; at least 3 bits
 *         per 4096 pixels (an LZW code is 3 bits or more and stands for 4096 pixels at most)
 * bytes_needed gets that floor, *complete whether the structure ends properly. */
static uint32_t be32(const unsigned char *b) {
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static uint32_t le32(const unsigned char *b) {
    return (uint32_t)b[3] << 24 | (uint32_t)b[2] << 16 | (uint32_t)b[1] << 8 | b[0];
}

static int incomplete(fl_error *err, const char *why) {
    return fl_fail(err, FL_EINVAL, "truncated or corrupt image (%s)", why);
}

static int too_short(fl_error *err, int w, int h, uint64_t need, uint64_t have) {
    return fl_fail(err, FL_EINVAL, "truncated or corrupt image (%dx%d needs at least %llu bytes of pixel data, the "
                                   "file holds %llu)", w, h, (unsigned long long)need, (unsigned long long)have);
}

static int png_complete(const unsigned char *b, size_t n, int w, int h, fl_error *err) {
    static const int channels[7] = {1, 0, 3, 1, 2, 0, 4}; /* by color type */
    if (n < 33) return incomplete(err, "the file ends inside its header");
    int depth = b[24], color = b[25];
    int bpp = color <= 6 ? channels[color] * depth : 0;
    if (bpp <= 0 || depth > 16) return 0; /* stb refuses the header with its reason */
    uint64_t raw = (uint64_t)h * (1 + ((uint64_t)w * (uint64_t)bpp + 7) / 8), idat = 0;
    size_t pos = 8;
    for (;;) {
        if (n - pos < 12) return incomplete(err, "the file ends before its IEND chunk");
        uint32_t len = be32(b + pos);
        if (len > n - pos - 12) return incomplete(err, "the file ends inside a chunk");
        if (!memcmp(b + pos + 4, "IDAT", 4)) idat += len;
        if (!memcmp(b + pos + 4, "IEND", 4)) break;
        pos += 12 + (size_t)len;
    }
    uint64_t need = raw / 1032;
    if (idat < need) return too_short(err, w, h, need, idat);
    return 0;
}

static int jpeg_complete(const unsigned char *b, size_t n, int w, int h, fl_error *err) {
    bool scan = false, end = false;
    size_t pos = 2;
    while (pos + 1 < n && !end) {
        if (b[pos] != 0xFF) { /* entropy-coded data */
            pos++;
            continue;
        }
        unsigned char m = b[pos + 1];
        if (m == 0x00 || m == 0xFF || (m >= 0xD0 && m <= 0xD8) || m == 0x01) { /* stuffing, fill, RSTn, SOI, TEM */
            pos += m == 0xFF ? 1 : 2;
            continue;
        }
        if (m == 0xD9) {
            end = true;
            break;
        }
        if (n - pos < 4) break;
        size_t len = (size_t)b[pos + 2] << 8 | b[pos + 3];
        if (len < 2 || len > n - pos - 2) return incomplete(err, "the file ends inside a JPEG segment");
        if (m == 0xDA) scan = true;
        pos += 2 + len;
    }
    if (!scan || !end) return incomplete(err, "no end-of-image marker after the scan data");
    uint64_t blocks = (((uint64_t)w + 7) / 8) * (((uint64_t)h + 7) / 8), need = blocks / 8;
    if (n < need) return too_short(err, w, h, need, n);
    return 0;
}

/* The fields of a BMP header that size its pixels. */
typedef struct bmp_header {
    uint32_t offset, compress;
    int64_t width, height; /* height < 0: rows stored top-down */
    int bpp;
} bmp_header;

static int bmp_read(const unsigned char *b, size_t n, bmp_header *hd, fl_error *err) {
    if (n < 26) return incomplete(err, "the file ends inside its header");
    memset(hd, 0, sizeof *hd);
    hd->offset = le32(b + 10);
    uint32_t hsz = le32(b + 14);
    if (hsz == 12) { /* OS/2: 16-bit sizes */
        hd->width = b[18] | b[19] << 8;
        hd->height = b[20] | b[21] << 8;
        hd->bpp = b[24] | b[25] << 8;
    } else {
        if (n < 34) return incomplete(err, "the file ends inside its header");
        hd->width = (int32_t)le32(b + 18);
        hd->height = (int32_t)le32(b + 22);
        hd->bpp = b[28] | b[29] << 8;
        hd->compress = le32(b + 30);
    }
    if (hd->width <= 0 || hd->width > INT_MAX || hd->height == 0 || hd->height == INT32_MIN)
        return incomplete(err, "bad BMP size");
    return 0;
}

/* The size as the decoder sees it: a negative height is a top-down BMP, as valid as any (stb's
 * size query reports it unchanged, so it is read here). */
static int bmp_size(const unsigned char *b, size_t n, int *w, int *h, fl_error *err) {
    bmp_header hd;
    if (bmp_read(b, n, &hd, err) != 0) return -1;
    *w = (int)hd.width;
    *h = (int)(hd.height < 0 ? -hd.height : hd.height);
    return 0;
}

static int bmp_complete(const unsigned char *b, size_t n, fl_error *err) {
    bmp_header hd;
    if (bmp_read(b, n, &hd, err) != 0) return -1;
    if (hd.compress != 0 && hd.compress != 3) return 0; /* RLE and the rest: stb refuses them with its reason */
    int bpp = hd.bpp;
    if (bpp != 1 && bpp != 4 && bpp != 8 && bpp != 16 && bpp != 24 && bpp != 32) return 0;
    uint64_t rows = (uint64_t)(hd.height < 0 ? -hd.height : hd.height);
    uint64_t stride = ((uint64_t)hd.width * (uint64_t)bpp + 31) / 32 * 4, need = (uint64_t)hd.offset + stride * rows;
    if (n < need) return too_short(err, (int)hd.width, (int)rows, need, n);
    return 0;
}

static int gif_complete(const unsigned char *b, size_t n, int w, int h, fl_error *err) {
    if (n < 13) return incomplete(err, "the file ends inside its header");
    size_t pos = 13;
    if (b[10] & 0x80) pos += (size_t)3 << ((b[10] & 7) + 1);
    for (;;) {
        if (pos >= n) return incomplete(err, "the file ends before its first image");
        if (b[pos] == 0x21) { /* extension: label, then sub-blocks */
            pos += 2;
            while (pos < n && b[pos] != 0) pos += (size_t)b[pos] + 1;
            if (pos >= n) return incomplete(err, "the file ends inside an extension");
            pos++;
        } else if (b[pos] == 0x2C) {
            if (n - pos < 11) return incomplete(err, "the file ends inside an image descriptor");
            unsigned char flags = b[pos + 9];
            pos += 10;
            if (flags & 0x80) pos += (size_t)3 << ((flags & 7) + 1);
            pos++; /* LZW minimum code size */
            uint64_t data = 0;
            while (pos < n && b[pos] != 0) {
                data += b[pos];
                pos += (size_t)b[pos] + 1;
            }
            if (pos >= n) return incomplete(err, "the file ends inside the image data");
            uint64_t need = (uint64_t)w * (uint64_t)h * 3 / (8 * 4096);
            if (data < need) return too_short(err, w, h, need, data);
            return 0;
        } else {
            return 0; /* a trailer or an unknown block: stb decides */
        }
    }
}

static const char *stb_reason(void) {
    const char *r = stbi_failure_reason();
    return r && *r ? r : "unknown error";
}

int fl_image_probe(const void *bytes, size_t n, int *width, int *height, fl_error *err) {
    if (n == 0) return fl_fail(err, FL_EINVAL, "empty file");
    int decodable = 0;
    const char *format = fl_image_sniff(bytes, n, &decodable);
    if (!format) return fl_fail(err, FL_EINVAL, "not an image");
    if (!decodable)
        return fl_fail(err, FL_EUNSUPPORTED, "unsupported image format (%s; use PNG, JPEG, BMP or GIF)", format);
    if (n > INT_MAX) return fl_fail(err, FL_ELIMIT, "file too large to decode");
    /* stb will not even report the size of a PNG over 1 GiB of raw pixels, so the size check could
     * not name it; the IHDR chunk is always first, at a fixed place. */
    const unsigned char *b = bytes;
    if (strcmp(format, "PNG") == 0 && !png_chunks_ok(b, n))
        return fl_fail(err, FL_EINVAL, "truncated or corrupt image (empty first IDAT chunk)");
    if (strcmp(format, "PNG") == 0 && n >= 24 && memcmp(b + 12, "IHDR", 4) == 0) {
        uint32_t pw = (uint32_t)b[16] << 24 | (uint32_t)b[17] << 16 | (uint32_t)b[18] << 8 | b[19];
        uint32_t ph = (uint32_t)b[20] << 24 | (uint32_t)b[21] << 16 | (uint32_t)b[22] << 8 | b[23];
        if (pw == 0 || ph == 0 || pw > INT_MAX || ph > INT_MAX)
            return fl_fail(err, FL_EINVAL, "truncated or corrupt image (bad PNG header)");
        *width = (int)pw;
        *height = (int)ph;
        return 0;
    }
    if (strcmp(format, "JPEG") == 0 && !jpeg_tables_ok(b, n))
        return fl_fail(err, FL_EINVAL, "truncated or corrupt image (bad JPEG Huffman table)");
    int w = 0, h = 0, comp = 0;
    if (strcmp(format, "BMP") == 0 && bmp_size(b, n, &w, &h, err) != 0) return -1;
    stb_budget_begin(0, n);
    int ok = stbi_info_from_memory(bytes, (int)n, strcmp(format, "BMP") ? &w : NULL, strcmp(format, "BMP") ? &h : NULL,
                                   &comp);
    stb_budget_end();
    if (!ok) return fl_fail(err, FL_EINVAL, "truncated or corrupt image (stb: %s)", stb_reason());
    if (w <= 0 || h <= 0) return fl_fail(err, FL_EINVAL, "truncated or corrupt image (zero size)");
    *width = w;
    *height = h;
    return 0;
}

int fl_image_check_data(const void *bytes, size_t n, int width, int height, fl_error *err) {
    int decodable = 0;
    const char *format = fl_image_sniff(bytes, n, &decodable);
    if (!format || !decodable || width <= 0 || height <= 0) return 0; /* fl_image_probe refuses these */
    const unsigned char *b = bytes;
    if (!strcmp(format, "PNG")) return png_complete(b, n, width, height, err);
    if (!strcmp(format, "JPEG")) return jpeg_complete(b, n, width, height, err);
    if (!strcmp(format, "BMP")) return bmp_complete(b, n, err);
    return gif_complete(b, n, width, height, err);
}

/* One output pixel: the mean over the source box [x0, x1) x [y0, y1) of c * a + white * (1 - a). */
static void box_mean(const unsigned char *rgba, int w, int x0, int x1, int y0, int y1, float *dst) {
    uint64_t sum[3] = {0, 0, 0};
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) {
            const unsigned char *px = rgba + 4 * ((size_t)y * (size_t)w + (size_t)x);
            int a = px[3];
            for (int c = 0; c < 3; c++) sum[c] += (uint64_t)(px[c] * a + 255 * (255 - a));
        }
    double count = (double)(x1 - x0) * (double)(y1 - y0) * 65025.0;
    for (int c = 0; c < 3; c++) dst[c] = (float)((double)sum[c] / count);
}

/* Probes, checks the size and the data's structure, and decodes to 8-bit RGBA; the caller frees
 * *rgba with stbi_image_free and then calls stb_budget_end. */
static int decode_rgba(const void *bytes, size_t n, int64_t max_pixels, int max_side, unsigned char **rgba, int *width,
                       int *height, fl_error *err) {
    *rgba = NULL;
    int w = 0, h = 0;
    if (fl_image_probe(bytes, n, &w, &h, err)) return -1;
    if (fl_image_check_size(w, h, max_pixels, max_side, err)) return -1;
    if (fl_image_check_data(bytes, n, w, h, err)) return -1;
    int lw = 0, lh = 0, comp = 0;
    stb_budget_begin((int64_t)w * h, n);
    unsigned char *px = stbi_load_from_memory(bytes, (int)n, &lw, &lh, &comp, 4);
    if (!px) {
        stb_budget_end();
        return fl_fail(err, FL_EINVAL, "truncated or corrupt image (stb: %s)", stb_reason());
    }
    if (lw != w || lh != h) {
        stbi_image_free(px);
        stb_budget_end();
        return fl_fail(err, FL_EINVAL, "truncated or corrupt image (header says %dx%d, pixels are %dx%d)", w, h, lw, lh);
    }
    *rgba = px;
    *width = w;
    *height = h;
    return 0;
}

int fl_image_decode_fit(const void *bytes, size_t n, int64_t max_pixels, int max_side, int fit_side, fl_image *out,
                        fl_error *err) {
    memset(out, 0, sizeof *out);
    unsigned char *rgba = NULL;
    int w = 0, h = 0;
    if (decode_rgba(bytes, n, max_pixels, max_side, &rgba, &w, &h, err)) return -1;
    int ow = w, oh = h, longer = w > h ? w : h;
    if (fit_side > 0 && longer > fit_side) {
        ow = (int)(((int64_t)w * fit_side + longer / 2) / longer);
        oh = (int)(((int64_t)h * fit_side + longer / 2) / longer);
        ow = ow < 1 ? 1 : ow;
        oh = oh < 1 ? 1 : oh;
    }
    int rc = 0;
    if (fl_image_init(out, ow, oh, err) == 0 && ow == w && oh == h) {
        /* out = c * a + white * (1 - a), computed in integers then divided once: exact for a = 255. */
        size_t count = (size_t)w * (size_t)h;
        for (size_t i = 0; i < count; i++) {
            const unsigned char *px = rgba + 4 * i;
            int a = px[3];
            for (int c = 0; c < 3; c++) out->pixels[3 * i + c] = (float)(px[c] * a + 255 * (255 - a)) / 65025.0f;
        }
    } else if (out->pixels) {
        /* shrunk: each pixel the mean of its box of composited source pixels */
        for (int oy = 0; oy < oh; oy++) {
            int y0 = (int)((int64_t)oy * h / oh), y1 = (int)((int64_t)(oy + 1) * h / oh);
            for (int ox = 0; ox < ow; ox++) {
                int x0 = (int)((int64_t)ox * w / ow), x1 = (int)((int64_t)(ox + 1) * w / ow);
                box_mean(rgba, w, x0, x1, y0, y1, out->pixels + 3 * ((size_t)oy * (size_t)ow + (size_t)ox));
            }
        }
    } else {
        rc = -1;
    }
    stbi_image_free(rgba);
    stb_budget_end();
    return rc;
}

int fl_image_decode(const void *bytes, size_t n, int64_t max_pixels, int max_side, fl_image *out,
                    fl_error *err) {
    return fl_image_decode_fit(bytes, n, max_pixels, max_side, 0, out, err);
}

int fl_image_decode_layers(const void *bytes, size_t n, int64_t max_pixels, int max_side, fl_image *color,
                           fl_image *alpha, fl_error *err) {
    memset(color, 0, sizeof *color);
    memset(alpha, 0, sizeof *alpha);
    unsigned char *rgba = NULL;
    int w = 0, h = 0;
    if (decode_rgba(bytes, n, max_pixels, max_side, &rgba, &w, &h, err)) return -1;
    int rc = fl_image_init(color, w, h, err);
    if (rc == 0) rc = fl_image_init(alpha, w, h, err);
    if (rc == 0) {
        size_t count = (size_t)w * (size_t)h;
        for (size_t i = 0; i < count; i++) {
            const unsigned char *px = rgba + 4 * i;
            float a = px[3] / 255.0f;
            for (int c = 0; c < 3; c++) {
                color->pixels[3 * i + c] = (float)(px[c] * px[3]) / 65025.0f;
                alpha->pixels[3 * i + c] = a;
            }
        }
    } else {
        fl_image_release(color);
        fl_image_release(alpha);
    }
    stbi_image_free(rgba);
    stb_budget_end();
    return rc;
}

#else /* no stb */

int fl_image_probe(const void *bytes, size_t n, int *width, int *height, fl_error *err) {
    return fl_fail(err, FL_EUNSUPPORTED, "decoding images needs stb_image, which this build lacks");
}

int fl_image_check_data(const void *bytes, size_t n, int width, int height, fl_error *err) {
    return fl_fail(err, FL_EUNSUPPORTED, "decoding images needs stb_image, which this build lacks");
}

int fl_image_decode_fit(const void *bytes, size_t n, int64_t max_pixels, int max_side, int fit_side, fl_image *out,
                        fl_error *err) {
    memset(out, 0, sizeof *out);
    return fl_fail(err, FL_EUNSUPPORTED, "decoding images needs stb_image, which this build lacks");
}

int fl_image_decode(const void *bytes, size_t n, int64_t max_pixels, int max_side, fl_image *out,
                    fl_error *err) {
    return fl_image_decode_fit(bytes, n, max_pixels, max_side, 0, out, err);
}

int fl_image_decode_layers(const void *bytes, size_t n, int64_t max_pixels, int max_side, fl_image *color,
                           fl_image *alpha, fl_error *err) {
    memset(color, 0, sizeof *color);
    memset(alpha, 0, sizeof *alpha);
    return fl_fail(err, FL_EUNSUPPORTED, "decoding images needs stb_image, which this build lacks");
}

#endif
