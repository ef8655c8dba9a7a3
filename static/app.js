/* fraudapp dashboard: draws the server-built Plotly figures, trims the live feed, and handles
   the keyboard (review queue: j/k move, f fraud, l legitimate, Enter open; "/" search). */
(function () {
  "use strict";

  var PLOT_CONFIG = {
    displaylogo: false,
    responsive: true,
    modeBarButtonsToRemove: ["lasso2d", "select2d", "autoScale2d", "toggleSpikelines"],
  };
  var FEED_MAX_ROWS = 30;

  // --- figures --------------------------------------------------------------------------------
  function renderFigures(root) {
    if (!window.Plotly || !root || !root.querySelectorAll) return;
    root.querySelectorAll('script[type="application/json"][data-figure-for]').forEach(function (el) {
      var target = document.getElementById(el.dataset.figureFor);
      if (!target) return;
      var figure = JSON.parse(el.textContent);
      window.Plotly.react(target, figure.data, figure.layout, PLOT_CONFIG);
    });
  }

  // --- live feed ------------------------------------------------------------------------------
  function trimFeed() {
    var feed = document.getElementById("feed");
    var last = feed && feed.rows[FEED_MAX_ROWS - 1];
    if (!last) return;
    // Everything after the last row kept goes, not only rows: each message also brings the
    // whitespace text between its rows, which would otherwise pile up (~10 nodes a second).
    while (last.nextSibling) feed.removeChild(last.nextSibling);
  }

  // --- toasts ---------------------------------------------------------------------------------
  function toast(message) {
    var box = document.getElementById("toasts");
    if (!box) return;
    var el = document.createElement("div");
    el.className = "toast";
    el.textContent = message;
    box.appendChild(el);
    setTimeout(function () { el.remove(); }, 4000);
  }

  // --- review queue selection -----------------------------------------------------------------
  function queueRows() {
    var queue = document.getElementById("review-queue");
    return queue ? Array.prototype.slice.call(queue.tBodies[0].rows) : [];
  }

  function selected() {
    return document.querySelector("#review-queue tr.selected");
  }

  function select(row) {
    var current = selected();
    if (current) {
      current.classList.remove("selected");
      current.removeAttribute("aria-selected");
    }
    if (!row) return;
    row.classList.add("selected");
    row.setAttribute("aria-selected", "true");
    row.focus({ preventScroll: true });
    row.scrollIntoView({ block: "nearest" });
  }

  function move(step) {
    var rows = queueRows();
    if (!rows.length) return;
    var index = rows.indexOf(selected());
    var next = index < 0 ? 0 : Math.min(rows.length - 1, Math.max(0, index + step));
    select(rows[next]);
  }

  function press(scope, shortcut) {
    var button = scope && scope.querySelector('button[data-shortcut="' + shortcut + '"]');
    if (button && !button.disabled) button.click();
  }

  // --- events ---------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", function () {
    renderFigures(document);
    if (queueRows().length) select(queueRows()[0]);
  });

  document.addEventListener("htmx:afterSwap", function (event) {
    // htmx fires this on every element a response swapped in (out-of-band ones too), each
    // with the same detail.target: draw what each one holds, so every figure is drawn once.
    renderFigures(event.target);
  });

  document.addEventListener("htmx:sseMessage", trimFeed);

  document.addEventListener("htmx:beforeSwap", function (event) {
    // A labelled queue row is about to leave: select the one after it (or before, at the end).
    var row = event.detail.target;
    if (!row || !row.matches || !row.matches("#review-queue tr")) return;
    if (event.detail.xhr.status >= 400) return;
    var next = row.nextElementSibling || row.previousElementSibling;
    setTimeout(function () { select(next); }, 0);
  });

  document.addEventListener("fraudapp:toast", function (event) {
    toast(event.detail.message);
  });

  document.addEventListener("click", function (event) {
    var row = event.target.closest && event.target.closest("#review-queue tbody tr");
    if (row) select(row);
  });

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    var target = event.target;
    if (target.closest && target.closest("input, textarea, select, [contenteditable]")) return;
    var key = event.key;
    if (key === "/") {
      var search = document.getElementById("search-q");
      if (search) { event.preventDefault(); search.focus(); }
      return;
    }
    if (queueRows().length) {
      if (key === "j" || key === "ArrowDown") { event.preventDefault(); move(1); }
      else if (key === "k" || key === "ArrowUp") { event.preventDefault(); move(-1); }
      else if (key === "f" || key === "l") { press(selected(), key); }
      else if ((key === "Enter" && !target.closest("a, button")) || key === "o") {
        var link = selected() && selected().querySelector("a[data-open]");
        if (link) { event.preventDefault(); window.location.href = link.href; }
      }
      return;
    }
    if (key === "f" || key === "l") press(document.getElementById("label-panel"), key);
  });
})();
