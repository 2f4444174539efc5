/*
 * heldout_art.c — the clip art held out of the built-in encoder's training (datasets/heldout_art.h).
 */
#include "datasets/heldout_art.h"

static const char *const demo_sources[] = {
    "animals/mammals/porcinet_01.png",
    "signs_and_symbols/simbolo_giapponese_archi_01.png",
    "food/beverages/bottled_drink.png",
    "food/beverages/bottled_drink_bw.png",
};

static const char *const distractor_sources[] = {
    "animals/birds/duck_yellow_kurt_cagle_.png",
    "animals/mammals/cartoon_cat_gerald_g._01.png",
    "buildings/homes/house_gabrielle_nowicki_.png",
    "transportation/bus_01.png",
    "plants/mushroom_benji_park_.png",
    "signs_and_symbols/biohazard_symbol_01.png",
    "plants/cactus_linda_kim_01.png",
};

size_t fl_heldout_demo_sources(const char *const **out) {
    *out = demo_sources;
    return sizeof demo_sources / sizeof demo_sources[0];
}

size_t fl_heldout_distractor_sources(const char *const **out) {
    *out = distractor_sources;
    return sizeof distractor_sources / sizeof distractor_sources[0];
}
