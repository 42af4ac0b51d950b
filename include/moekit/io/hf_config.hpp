#pragma once
// A Hugging Face config.json, read for what the router needs (ALGORITHMS.md §1.10), and the
// routers built from it. Host only; needs nlohmann-json (Debian: nlohmann-json3-dev; CMake:
// find_package(nlohmann_json) and link nlohmann_json::nlohmann_json).
//
// Keys read (a multimodal config's "text_config" object is read instead of the top level when
// present, as Llama-4's; model_type comes from it, else from the top level):
//   model_type            picks the family rules below
//   num_local_experts / num_experts / n_routed_experts   E (each family prefers its own key; two
//                         of them present with different values is an error)
//   num_experts_per_tok   K (required; Switch: absent or 1)
//   norm_topk_prob        renormalise the K weights; the family default when absent
//   scoring_func          softmax | sigmoid
//   topk_method           greedy (also the Hub's "gready") | group_limited_greedy | noaux_tc
//   n_group, topk_group   expert groups (absent or null: 1, no group stage, as the official
//                         DeepSeek inference code's Gate; HF's class defaults are model sizes and
//                         are not applied)
//   routed_scaling_factor scale of the weights (absent: 1)
//
// Families (model_type → router):
//   mixtral                         TopK softmax, always renormalised (norm_topk_prob false is an error)
//   qwen2_moe, qwen3_moe, olmoe     TopK softmax, norm_topk_prob default false
//   gpt_oss                         TopK softmax of the selected logits (normalised by construction)
//   llama4, llama4_text             TopK sigmoid, never renormalised
//   switch_transformers             TopK softmax, K = 1, not renormalised (capacity is the plan's)
//   deepseek_v2                     GroupedTopK, scoring_func default softmax, topk_method default
//                                   greedy, norm_topk_prob default false (§1.3, Hub semantics)
//   deepseek_v3                     GroupedTopK, scoring_func default sigmoid, topk_method default
//                                   noaux_tc, norm_topk_prob default true (§1.4); explicit keys are
//                                   honoured (transformers 5.x hard-codes sigmoid + noaux_tc)
//   anything else (or no model_type) scoring_func is required; topk_method present → GroupedTopK,
//                                   else TopK; norm_topk_prob default false
// A key a family fixes (scoring_func, topk_method, norm_topk_prob, n_group/topk_group, K for
// Switch) may be present only with the family's value; another value is an error naming the key,
// never silently ignored. Errors: Status::invalid_argument (missing required key, wrong JSON type,
// unknown value, contradicting key, malformed JSON), Status::io_error (file cannot be read), each
// with a message naming the source and the key.

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/routing/grouped_top_k.hpp"
#include "moekit/routing/scores.hpp"
#include "moekit/routing/top_k.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace io {

enum class RouterKind { top_k, grouped_top_k };

// The spellings of E (the number of routed experts) across families.
inline constexpr char const* expert_count_keys[] = {"num_local_experts", "num_experts", "n_routed_experts"};

// What a config.json says about routing, with every default applied.
struct RouterConfig {
  std::string model_type;  // as written ("" when the config names none)
  RouterKind kind = RouterKind::top_k;
  int num_experts = 0;
  int num_experts_per_tok = 0;
  routing::ScoreFunction scoring_func = routing::ScoreFunction::softmax;
  bool norm_topk_prob = false;
  float routed_scaling_factor = 1.f;
  routing::TopKMethod topk_method = routing::TopKMethod::greedy;  // GroupedTopK only
  int n_group = 1;
  int topk_group = 1;

  // DeepSeek-V3's noaux_tc selection reads e_score_correction_bias [E].
  [[nodiscard]] bool uses_correction_bias() const noexcept {
    return kind == RouterKind::grouped_top_k && topk_method == routing::TopKMethod::noaux_tc;
  }
};

[[nodiscard]] constexpr char const* to_string(routing::ScoreFunction s) noexcept {
  switch (s) {
    case routing::ScoreFunction::softmax: return "softmax";
    case routing::ScoreFunction::sigmoid: return "sigmoid";
    case routing::ScoreFunction::softmax_of_selected: return "softmax_of_selected";
  }
  return "?";
}
[[nodiscard]] constexpr char const* to_string(routing::TopKMethod m) noexcept {
  switch (m) {
    case routing::TopKMethod::greedy: return "greedy";
    case routing::TopKMethod::group_limited_greedy: return "group_limited_greedy";
    case routing::TopKMethod::noaux_tc: return "noaux_tc";
  }
  return "?";
}

namespace detail {

using Json = nlohmann::json;

enum class NormRule { always, never, config_default_false, config_default_true };

// The routing rules of one model family (header comment).
struct FamilyRules {
  char const* model_type;
  RouterKind kind;
  char const* experts_key;  // the key the family's HF config class reads
  routing::ScoreFunction scoring;
  bool scoring_from_config;  // honour a scoring_func key (else it must agree with `scoring`)
  NormRule norm;
  routing::TopKMethod method;  // GroupedTopK families: the default topk_method
  int fixed_k;                 // 0: num_experts_per_tok from the config
};

using routing::ScoreFunction;
using routing::TopKMethod;
inline constexpr FamilyRules family_rules[] = {
    {"mixtral", RouterKind::top_k, "num_local_experts", ScoreFunction::softmax, false, NormRule::always,
     TopKMethod::greedy, 0},
    {"qwen2_moe", RouterKind::top_k, "num_experts", ScoreFunction::softmax, false, NormRule::config_default_false,
     TopKMethod::greedy, 0},
    {"qwen3_moe", RouterKind::top_k, "num_experts", ScoreFunction::softmax, false, NormRule::config_default_false,
     TopKMethod::greedy, 0},
    {"olmoe", RouterKind::top_k, "num_experts", ScoreFunction::softmax, false, NormRule::config_default_false,
     TopKMethod::greedy, 0},
    {"gpt_oss", RouterKind::top_k, "num_local_experts", ScoreFunction::softmax_of_selected, false, NormRule::always,
     TopKMethod::greedy, 0},
    {"llama4", RouterKind::top_k, "num_local_experts", ScoreFunction::sigmoid, false, NormRule::never,
     TopKMethod::greedy, 0},
    {"llama4_text", RouterKind::top_k, "num_local_experts", ScoreFunction::sigmoid, false, NormRule::never,
     TopKMethod::greedy, 0},
    {"switch_transformers", RouterKind::top_k, "num_experts", ScoreFunction::softmax, false, NormRule::never,
     TopKMethod::greedy, 1},
    {"deepseek_v2", RouterKind::grouped_top_k, "n_routed_experts", ScoreFunction::softmax, true,
     NormRule::config_default_false, TopKMethod::greedy, 0},
    {"deepseek_v3", RouterKind::grouped_top_k, "n_routed_experts", ScoreFunction::sigmoid, true,
     NormRule::config_default_true, TopKMethod::noaux_tc, 0},
};

inline FamilyRules const* find_family(std::string_view model_type) {
  for (FamilyRules const& f : family_rules) {
    if (model_type == f.model_type) {
      return &f;
    }
  }
  return nullptr;
}

// A short rendering of a JSON value for messages (never throws).
inline std::string show(Json const& v) {
  std::string s = v.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (s.size() > 40) {
    s = s.substr(0, 37) + "...";
  }
  return std::string(v.type_name()) + " " + s;
}

class ConfigReader {
 public:
  ConfigReader(Json const& section, std::string_view source) : section_(section), source_(source) {}

  [[nodiscard]] bool has(char const* key) const {
    auto const it = section_.find(key);
    return it != section_.end() && !it->is_null();
  }

  Status fail(std::string const& what) const {
    return error(Status::invalid_argument, "%.*s: %s", static_cast<int>(source_.size()), source_.data(), what.c_str());
  }

  Status integer(char const* key, int& out) const {
    Json const& v = section_.at(key);
    if (!v.is_number_integer()) {
      return fail(std::string("key '") + key + "' must be an integer (got " + show(v) + ")");
    }
    auto const i = v.get<std::int64_t>();
    if (v.is_number_unsigned() && v.get<std::uint64_t>() > std::uint64_t(std::numeric_limits<int>::max())) {
      return fail(std::string("key '") + key + "' is out of range (got " + show(v) + ")");
    }
    if (i < std::numeric_limits<int>::min() || i > std::numeric_limits<int>::max()) {
      return fail(std::string("key '") + key + "' is out of range (got " + show(v) + ")");
    }
    out = static_cast<int>(i);
    return Status::ok;
  }

  Status boolean(char const* key, bool& out) const {
    Json const& v = section_.at(key);
    if (!v.is_boolean()) {
      return fail(std::string("key '") + key + "' must be true or false (got " + show(v) + ")");
    }
    out = v.get<bool>();
    return Status::ok;
  }

  Status number(char const* key, float& out) const {
    Json const& v = section_.at(key);
    if (!v.is_number()) {
      return fail(std::string("key '") + key + "' must be a number (got " + show(v) + ")");
    }
    double const d = v.get<double>();
    if (!std::isfinite(d) || std::fabs(d) > double(std::numeric_limits<float>::max())) {
      return fail(std::string("key '") + key + "' is out of range (got " + show(v) + ")");
    }
    out = static_cast<float>(d);
    return Status::ok;
  }

  Status string(char const* key, std::string& out) const {
    Json const& v = section_.at(key);
    if (!v.is_string()) {
      return fail(std::string("key '") + key + "' must be a string (got " + show(v) + ")");
    }
    out = v.get<std::string>();
    return Status::ok;
  }

 private:
  Json const& section_;
  std::string_view source_;
};

inline Status parse_scoring(ConfigReader const& r, std::string const& v, ScoreFunction& out) {
  if (v == "softmax") {
    out = ScoreFunction::softmax;
  } else if (v == "sigmoid") {
    out = ScoreFunction::sigmoid;
  } else {
    return r.fail("key 'scoring_func' must be \"softmax\" or \"sigmoid\" (got \"" + v + "\")");
  }
  return Status::ok;
}

inline Status parse_method(ConfigReader const& r, std::string const& v, TopKMethod& out) {
  if (v == "greedy" || v == "gready") {  // some Hub DeepSeek-V2 code spells it "gready" (ALGORITHMS.md §1.3)
    out = TopKMethod::greedy;
  } else if (v == "group_limited_greedy") {
    out = TopKMethod::group_limited_greedy;
  } else if (v == "noaux_tc") {
    out = TopKMethod::noaux_tc;
  } else {
    return r.fail("key 'topk_method' must be \"greedy\", \"group_limited_greedy\" or \"noaux_tc\" (got \"" + v + "\")");
  }
  return Status::ok;
}

}  // namespace detail

// The object router keys are read from: `config["text_config"]` when that is an object, else `config`.
[[nodiscard]] inline nlohmann::json const& router_section(nlohmann::json const& config) {
  auto const it = config.find("text_config");
  return it != config.end() && it->is_object() ? *it : config;
}
[[nodiscard]] inline nlohmann::json& router_section(nlohmann::json& config) {
  auto const it = config.find("text_config");
  return it != config.end() && it->is_object() ? *it : config;
}

// Reads the router keys of `config` (a parsed config.json) into `out` (untouched on failure).
// `source` names the config in messages (a path, usually).
[[nodiscard]] inline Status parse_router_config(nlohmann::json const& config, RouterConfig& out,
                                                std::string_view source = "config") {
  using detail::NormRule;
  if (!config.is_object()) {
    return error(Status::invalid_argument, "%.*s: a config must be a JSON object (got %s)",
                 static_cast<int>(source.size()), source.data(), config.type_name());
  }
  nlohmann::json const& section = router_section(config);
  detail::ConfigReader const r(section, source);
  RouterConfig c;

  if (r.has("model_type")) {
    if (Status s = r.string("model_type", c.model_type); !s) {
      return s;
    }
  } else if (&section != &config && config.contains("model_type") && !config.at("model_type").is_null()) {
    if (Status s = detail::ConfigReader(config, source).string("model_type", c.model_type); !s) {
      return s;
    }
  }
  detail::FamilyRules const* const family = detail::find_family(c.model_type);
  std::string const family_name = "model_type '" + c.model_type + "'";

  // E: the family's own key first, then the other spellings; two that disagree are an error.
  char const* experts_key = nullptr;
  if (family != nullptr && r.has(family->experts_key)) {
    experts_key = family->experts_key;
  }
  for (char const* key : expert_count_keys) {
    if (!r.has(key)) {
      continue;
    }
    int v = 0;
    if (Status s = r.integer(key, v); !s) {
      return s;
    }
    if (experts_key == nullptr) {
      experts_key = key;
    }
    int first = 0;
    if (Status s = r.integer(experts_key, first); !s) {
      return s;
    }
    if (v != first) {
      return r.fail(std::string("keys '") + experts_key + "' (" + std::to_string(first) + ") and '" + key + "' (" +
                    std::to_string(v) + ") disagree on the number of experts");
    }
  }
  if (experts_key == nullptr) {
    return r.fail(std::string("missing key '") + (family != nullptr ? family->experts_key : "num_experts") +
                  "' (the number of routed experts; also read as num_local_experts / num_experts / n_routed_experts)");
  }
  if (Status s = r.integer(experts_key, c.num_experts); !s) {
    return s;
  }

  // K.
  if (r.has("num_experts_per_tok")) {
    if (Status s = r.integer("num_experts_per_tok", c.num_experts_per_tok); !s) {
      return s;
    }
    if (family != nullptr && family->fixed_k != 0 && c.num_experts_per_tok != family->fixed_k) {
      return r.fail("key 'num_experts_per_tok' = " + std::to_string(c.num_experts_per_tok) + " contradicts " +
                    family_name + ", which routes top-" + std::to_string(family->fixed_k));
    }
  } else if (family != nullptr && family->fixed_k != 0) {
    c.num_experts_per_tok = family->fixed_k;
  } else {
    return r.fail("missing key 'num_experts_per_tok'");
  }

  // Scoring function and router kind.
  std::string scoring_text, method_text;
  bool const has_scoring = r.has("scoring_func");
  bool const has_method = r.has("topk_method");
  if (has_scoring) {
    if (Status s = r.string("scoring_func", scoring_text); !s) {
      return s;
    }
  }
  if (has_method) {
    if (Status s = r.string("topk_method", method_text); !s) {
      return s;
    }
  }
  if (family != nullptr) {
    c.kind = family->kind;
    c.scoring_func = family->scoring;
    c.topk_method = family->method;
    if (has_scoring) {
      routing::ScoreFunction given{};
      if (Status s = detail::parse_scoring(r, scoring_text, given); !s) {
        return s;
      }
      // gpt-oss's softmax of the selected logits is the renormalised softmax (§1.5).
      bool const agrees = given == family->scoring || (family->scoring == routing::ScoreFunction::softmax_of_selected &&
                                                       given == routing::ScoreFunction::softmax);
      if (family->scoring_from_config) {
        c.scoring_func = given;
      } else if (!agrees) {
        return r.fail("key 'scoring_func' = \"" + scoring_text + "\" contradicts " + family_name + " (" +
                      to_string(family->scoring) + ")");
      }
    }
    if (has_method) {
      routing::TopKMethod given{};
      if (Status s = detail::parse_method(r, method_text, given); !s) {
        return s;
      }
      if (family->kind == RouterKind::grouped_top_k) {
        c.topk_method = given;
      } else if (given != routing::TopKMethod::greedy) {
        return r.fail("key 'topk_method' = \"" + method_text + "\" contradicts " + family_name +
                      " (plain top-k, no expert groups)");
      }
    }
  } else {
    if (!has_scoring) {
      return r.fail("missing key 'scoring_func' (softmax or sigmoid): " +
                    (c.model_type.empty() ? std::string("the config names no model_type")
                                          : "model_type '" + c.model_type + "' is not a known family") +
                    ", so the scoring must be given");
    }
    if (Status s = detail::parse_scoring(r, scoring_text, c.scoring_func); !s) {
      return s;
    }
    c.kind = has_method ? RouterKind::grouped_top_k : RouterKind::top_k;
    if (has_method) {
      if (Status s = detail::parse_method(r, method_text, c.topk_method); !s) {
        return s;
      }
    }
  }

  // Renormalisation.
  NormRule const norm = family != nullptr ? family->norm : NormRule::config_default_false;
  c.norm_topk_prob = norm == NormRule::always || norm == NormRule::config_default_true;
  if (r.has("norm_topk_prob")) {
    bool given = false;
    if (Status s = r.boolean("norm_topk_prob", given); !s) {
      return s;
    }
    if ((norm == NormRule::always && !given) || (norm == NormRule::never && given)) {
      return r.fail(std::string("key 'norm_topk_prob' = ") + (given ? "true" : "false") + " contradicts " +
                    family_name + ", which " + (norm == NormRule::always ? "always" : "never") + " renormalises");
    }
    c.norm_topk_prob = given;
  }

  // Groups and scaling.
  for (char const* key : {"n_group", "topk_group"}) {
    int v = 1;
    if (r.has(key)) {
      if (Status s = r.integer(key, v); !s) {
        return s;
      }
    }
    if (c.kind == RouterKind::top_k && v != 1) {
      return r.fail(std::string("key '") + key + "' = " + std::to_string(v) + " needs a grouped router (" +
                    (family != nullptr ? family_name + " routes plain top-k"
                                       : std::string("set topk_method to group_limited_greedy or noaux_tc")) +
                    ")");
    }
    (std::string_view(key) == "n_group" ? c.n_group : c.topk_group) = v;
  }
  if (r.has("routed_scaling_factor")) {
    if (Status s = r.number("routed_scaling_factor", c.routed_scaling_factor); !s) {
      return s;
    }
  }
  out = std::move(c);
  return Status::ok;
}

// Parses JSON text, then its router keys. Malformed JSON → invalid_argument with the parser's words.
[[nodiscard]] inline Status parse_router_config_text(std::string_view json_text, RouterConfig& out,
                                                     std::string_view source = "config") {
  nlohmann::json config;
#if defined(__cpp_exceptions)
  try {
    config = nlohmann::json::parse(json_text.begin(), json_text.end());
  } catch (nlohmann::json::exception const& e) {  // the I/O edge: nlohmann-json throws, moekit returns a Status
    return error(Status::invalid_argument, "%.*s: malformed JSON: %s", static_cast<int>(source.size()), source.data(),
                 e.what());
  }
#else
  config = nlohmann::json::parse(json_text.begin(), json_text.end(), nullptr, false);
  if (config.is_discarded()) {
    return error(Status::invalid_argument, "%.*s: malformed JSON", static_cast<int>(source.size()), source.data());
  }
#endif
  return parse_router_config(config, out, source);
}

// Reads a JSON file into `out` (untouched on failure): io_error when it cannot be read,
// invalid_argument when it is not JSON.
[[nodiscard]] inline Status read_json_file(std::filesystem::path const& path, nlohmann::json& out) {
  std::string const name = path.string();
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return error(Status::io_error, "config '%s': cannot open: %s", name.c_str(),
                 std::filesystem::exists(path, ec) ? "not a regular file" : "no such file");
  }
  std::ifstream f(path, std::ios::binary);
  std::stringstream text;
  text << f.rdbuf();
  if (!f) {
    return error(Status::io_error, "config '%s': read error", name.c_str());
  }
  std::string const s = text.str();
#if defined(__cpp_exceptions)
  try {
    out = nlohmann::json::parse(s);
  } catch (nlohmann::json::exception const& e) {
    return error(Status::invalid_argument, "config '%s': malformed JSON: %s", name.c_str(), e.what());
  }
#else
  nlohmann::json j = nlohmann::json::parse(s, nullptr, false);
  if (j.is_discarded()) {
    return error(Status::invalid_argument, "config '%s': malformed JSON", name.c_str());
  }
  out = std::move(j);
#endif
  return Status::ok;
}

// read_json_file, then parse_router_config.
[[nodiscard]] inline Status read_router_config(std::filesystem::path const& path, RouterConfig& out) {
  nlohmann::json config;
  if (Status s = read_json_file(path, config); !s) {
    return s;
  }
  return parse_router_config(config, out, "config '" + path.string() + "'");
}

// The TopK router `c` describes; invalid_argument when `c` needs a GroupedTopK, or the router's
// own validate() message when a parameter is out of range (k > E, ...). `out` untouched on failure.
template <int MaxK = 8>
[[nodiscard]] Status make_top_k_router(RouterConfig const& c, routing::TopK<MaxK>& out) {
  if (c.kind != RouterKind::top_k) {
    return error(Status::invalid_argument,
                 "make_top_k_router: model_type '%s' with topk_method %s needs a grouped router (make_grouped_router)",
                 c.model_type.c_str(), to_string(c.topk_method));
  }
  routing::TopK<MaxK> r{};
  r.experts = c.num_experts;
  r.k = c.num_experts_per_tok;
  r.scoring = c.scoring_func;
  r.norm_topk_prob = c.scoring_func == routing::ScoreFunction::softmax_of_selected ? false : c.norm_topk_prob;
  r.routed_scaling_factor = c.routed_scaling_factor;
  if (Status s = r.validate(); !s) {
    return s;
  }
  out = r;
  return Status::ok;
}

// The GroupedTopK router `c` describes, reading `e_score_correction_bias` ([E] floats, host or
// device memory as the router will run; null: a zero bias) for noaux_tc. invalid_argument when `c`
// is a plain top-k router, or a bias is given to a method that does not use one.
template <int MaxK = 8>
[[nodiscard]] Status make_grouped_router(RouterConfig const& c, float const* e_score_correction_bias,
                                         routing::GroupedTopK<MaxK>& out) {
  if (c.kind != RouterKind::grouped_top_k) {
    return error(Status::invalid_argument,
                 "make_grouped_router: model_type '%s' routes plain top-k (no topk_method): use make_top_k_router",
                 c.model_type.c_str());
  }
  if (e_score_correction_bias != nullptr && !c.uses_correction_bias()) {
    return error(Status::invalid_argument,
                 "make_grouped_router: e_score_correction_bias is only used by topk_method noaux_tc (got %s)",
                 to_string(c.topk_method));
  }
  routing::GroupedTopK<MaxK> r{};
  r.experts = c.num_experts;
  r.k = c.num_experts_per_tok;
  r.method = c.topk_method;
  r.scoring = c.scoring_func;
  r.n_group = c.n_group;
  r.topk_group = c.topk_group;
  r.norm_topk_prob = c.norm_topk_prob;
  r.routed_scaling_factor = c.routed_scaling_factor;
  r.correction_bias = e_score_correction_bias;
  if (Status s = r.validate(); !s) {
    return s;
  }
  out = r;
  return Status::ok;
}

}  // namespace io
MOEKIT_NAMESPACE_END
