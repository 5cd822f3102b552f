// globex.example: office hours and a hunt group, in Java.
//
// During office hours a call to the sales line rings the sales desks one after
// another (serial forking, 10 s each); other numbers go straight to the
// extension. Outside office hours every call is redirected to the after-hours
// service. The office calendar uses java.time with the office's own time zone,
// the kind of logic (and library) a Java shop already has.

import babelsip.Reply;
import babelsip.Request;
import babelsip.Route;
import java.time.DayOfWeek;
import java.time.LocalTime;
import java.time.ZoneId;
import java.time.ZonedDateTime;
import java.util.List;

public class Globex implements Route {
    // Placeholders: replace with your own addresses.
    private static final String PBX = "127.0.0.1:5080";
    private static final String AFTER_HOURS = "sip:after-hours@127.0.0.1:5081";
    private static final List<String> SALES_DESKS = List.of(
            "sip:desk1@" + PBX, "sip:desk2@" + PBX, "sip:desk3@" + PBX);
    private static final ZoneId OFFICE_ZONE = ZoneId.of("Europe/Paris");
    private static final LocalTime OPENS = LocalTime.of(8, 30);
    private static final LocalTime CLOSES = LocalTime.of(18, 0);

    /** Office hours; the X-Globex-Clock header (HH:MM, a weekday) lets tests pick the time. */
    static boolean open(Request req) {
        String clock = req.header("X-Globex-Clock");
        ZonedDateTime now = ZonedDateTime.now(OFFICE_ZONE);
        LocalTime time = clock != null ? LocalTime.parse(clock) : now.toLocalTime();
        DayOfWeek day = clock != null ? DayOfWeek.MONDAY : now.getDayOfWeek();
        boolean weekday = day != DayOfWeek.SATURDAY && day != DayOfWeek.SUNDAY;
        return weekday && !time.isBefore(OPENS) && time.isBefore(CLOSES);
    }

    @Override
    public void onRequest(Request req) {
        if (!req.method().equals("INVITE")) {
            return;  // the core proxies the rest to the request URI
        }
        if (!open(req)) {
            req.redirect(AFTER_HOURS);
            return;
        }
        req.setHeader("X-Tenant", "globex");
        req.recordRoute();
        if (req.ruriUser().equals("sales")) {
            req.relay(SALES_DESKS, "serial", 10);
        } else {
            req.relay("sip:" + req.ruriUser() + "@" + PBX);
        }
    }

    // Nobody picked up: answer with something the caller's phone can show.
    @Override
    public void onFailure(Request req, Reply reply) {
        if (reply.code() == 408 || reply.code() == 480) {
            req.reply(480, "Nobody Available At Globex");
        }
    }
}
