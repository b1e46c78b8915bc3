// dcgan-curate report: sorting, the key filter and the lookup in every drop list.
"use strict";
(function () {
  const body = document.body;
  document.querySelectorAll("button.sort").forEach(function (b) {
    b.addEventListener("click", function () {
      const box = b.closest(".gallery").querySelector(".items");
      const desc = b.dataset.dir !== "desc";
      const kids = Array.from(box.children);
      kids.sort(function (x, y) {
        const d = parseFloat(x.dataset.value) - parseFloat(y.dataset.value);
        return desc ? -d : d;
      });
      kids.forEach(function (k) { box.appendChild(k); });
      b.dataset.dir = desc ? "desc" : "asc";
      b.textContent = b.dataset.label + (desc ? " \u25bc" : " \u25b2");
    });
  });
  const q = document.getElementById("q");
  const res = document.getElementById("qres");
  function filter() {
    const text = q.value.trim().toLowerCase();
    if (!text) res.textContent = "";
    document.querySelectorAll(".gallery").forEach(function (g) {
      let n = 0;
      Array.from(g.querySelector(".items").children).forEach(function (el) {
        const keys = Array.from(el.querySelectorAll("[data-key]")).concat(el.matches("[data-key]") ? [el] : []);
        const hit = !text || keys.some(function (k) { return k.dataset.key.toLowerCase().includes(text); });
        el.classList.toggle("hidden", !hit);
        if (hit) n++;
      });
      const c = g.querySelector(".count");
      c.textContent = text ? n + " of the shown match" : c.dataset.text;
    });
  }
  // Every drop list of the chain, in shard files loaded on demand (file:// allows scripts).
  const shards = parseInt(body.dataset.shards || "0", 10);
  const loaded = {};
  const table = [];
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table.push(c >>> 0);
  }
  function crc32(s) {  // zlib.crc32 of the key's UTF-8, as the report's writer computes it
    let c = 0xffffffff;
    new TextEncoder().encode(s).forEach(function (b) { c = table[(c ^ b) & 0xff] ^ (c >>> 8); });
    return (c ^ 0xffffffff) >>> 0;
  }
  function show(key, rows) {
    res.textContent = "";
    const hits = rows.filter(function (r) { return r[0] === key; });
    if (!hits.length) {
      res.textContent = "\u201c" + key + "\u201d is in no drop list of this chain (kept, or never read).";
      return;
    }
    hits.forEach(function (r) {
      const line = document.createElement("div");
      const stage = document.getElementById("n" + r[1]);
      line.textContent = (stage ? stage.dataset.title : "stage " + r[1]) + ": " + r[2] + " \u2014 " + r[3] + " ";
      if (r[4]) {
        const a = document.createElement("a");
        a.href = "#" + r[4];
        a.textContent = "(shown)";
        line.appendChild(a);
      }
      res.appendChild(line);
    });
  }
  window.reportKeys = function (shard, rows) {
    loaded[shard] = rows;
    const key = q.value.trim();
    if (shards && crc32(key) % shards === shard) show(key, rows);
  };
  function lookup() {
    const key = q.value.trim();
    if (!key || !shards) { res.textContent = ""; return; }
    const shard = crc32(key) % shards;
    if (loaded[shard]) { show(key, loaded[shard]); return; }
    const s = document.createElement("script");
    s.src = body.dataset.keys + shard.toString(16).padStart(2, "0") + ".js";
    document.head.appendChild(s);
  }
  q.addEventListener("input", filter);
  q.addEventListener("keydown", function (e) { if (e.key === "Enter") lookup(); });
  document.getElementById("qgo").addEventListener("click", lookup);
})();
