/* imagekit-bgremove: live updates of the admin while background removals run.
 *
 * Elements rendered with data-ikbg-unfinished (a list cell, or the change form's preview) are
 * refreshed from the JSON status view named by their data-ikbg-status, every data-ikbg-poll
 * milliseconds: the server sends the same markup again, which replaces the element. Polling
 * stops for an element once its jobs are finished, and altogether when none is unfinished; it
 * backs off on errors and pauses while the tab is hidden. No page reload, so a half-filled
 * change form keeps what was typed.
 */
(function () {
    "use strict";

    var MAX_DELAY = 30000;
    var timer = null;

    function unfinished() {
        return Array.prototype.slice.call(
            document.querySelectorAll("[data-ikbg-status][data-ikbg-unfinished]")
        );
    }

    function interval(elements) {
        var ms = parseInt(elements[0].getAttribute("data-ikbg-poll"), 10);
        return ms > 0 ? ms : 2000;
    }

    function schedule(delay) {
        if (timer !== null) {
            clearTimeout(timer);
        }
        timer = setTimeout(poll, delay);
    }

    function replace(element, html) {
        var holder = document.createElement("div");
        holder.innerHTML = html.trim();
        var fresh = holder.firstElementChild;
        if (fresh) {
            element.replaceWith(fresh);
        }
        return fresh;
    }

    function swap(element, entry) {
        if (!entry) {
            // Gone (deleted, or filtered out): stop asking about it.
            element.removeAttribute("data-ikbg-unfinished");
            return;
        }
        if (!replace(element, entry.html)) {
            return;
        }
        var history = document.getElementById("ikbg-history-group");
        if (history && entry.history) {
            replace(history, entry.history);
        }
        if (entry.failed) {
            document.querySelectorAll("[data-ikbg-retry-tool]").forEach(function (tool) {
                tool.hidden = false;
            });
        }
    }

    function poll(delay) {
        timer = null;
        var elements = unfinished();
        if (!elements.length) {
            return; // nothing left to watch: stop
        }
        var base = interval(elements);
        delay = delay || base;
        if (document.hidden) {
            schedule(base);
            return;
        }
        var groups = {};
        elements.forEach(function (element) {
            var url = element.getAttribute("data-ikbg-status");
            (groups[url] = groups[url] || []).push(element);
        });
        var requests = Object.keys(groups).map(function (url) {
            var params = new URLSearchParams();
            groups[url].forEach(function (element) {
                params.append("pk", element.getAttribute("data-ikbg-pk"));
            });
            var full = url + (url.indexOf("?") === -1 ? "?" : "&") + params.toString();
            return fetch(full, {
                credentials: "same-origin",
                headers: {"Accept": "application/json"}
            }).then(function (response) {
                if (!response.ok) {
                    throw new Error("HTTP " + response.status);
                }
                return response.json();
            }).then(function (data) {
                groups[url].forEach(function (element) {
                    swap(element, data.objects[element.getAttribute("data-ikbg-pk")]);
                });
            });
        });
        Promise.all(requests).then(function () {
            schedule(base);
        }, function () {
            schedule(Math.min(delay * 2, MAX_DELAY));
        });
    }

    function start() {
        var elements = unfinished();
        if (elements.length) {
            schedule(interval(elements));
        }
    }

    document.addEventListener("visibilitychange", function () {
        if (!document.hidden && timer === null) {
            start();
        }
    });
    if (document.readyState === "loading") {
        document.addEventListener("DOMContentLoaded", start);
    } else {
        start();
    }
})();
