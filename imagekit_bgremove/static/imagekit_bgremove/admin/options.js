/* imagekit-bgremove: the colour picker beside the background colour box.
 * Picking a colour writes its hex code into the box; typing a code or a colour name moves the
 * picker. Without JavaScript the picker stays hidden and the box works alone. */
(function () {
    "use strict";

    var canvas = document.createElement("canvas").getContext("2d");

    // "#abc", "81d4fa", "green" → "#rrggbb", or null when the browser does not know it.
    function toHex(text) {
        var value = (text || "").trim();
        if (!value) {
            return null;
        }
        if (/^#?[0-9a-f]{3,8}$/i.test(value) && value.charAt(0) !== "#") {
            value = "#" + value;
        }
        canvas.fillStyle = "#010203";
        canvas.fillStyle = value;
        var result = canvas.fillStyle;
        if (result === "#010203" && value.toLowerCase() !== "#010203") {
            return null;
        }
        return /^#[0-9a-f]{6}$/i.test(result) ? result : null;
    }

    function wire(picker) {
        var box = document.getElementById(picker.getAttribute("data-ikbg-colour-for"));
        if (!box) {
            return;
        }
        picker.hidden = false;
        picker.addEventListener("input", function () {
            box.value = picker.value.replace("#", "");
            box.dispatchEvent(new Event("change", {bubbles: true}));
        });
        box.addEventListener("input", function () {
            var hex = toHex(box.value);
            if (hex) {
                picker.value = hex;
            }
        });
    }

    function start() {
        document.querySelectorAll("input[data-ikbg-colour-for]").forEach(wire);
    }

    if (document.readyState === "loading") {
        document.addEventListener("DOMContentLoaded", start);
    } else {
        start();
    }
})();
