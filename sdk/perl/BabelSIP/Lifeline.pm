package BabelSIP::Lifeline;
# The worker's side of the host's lifeline (sdk/PROTOCOL.md §9 "Lifeline").
#
# The host hands every worker the read end of a pipe, fd $BABELSIP_LIFELINE_FD,
# whose write end only the host holds and never writes to. End of file on it
# means the host is gone — however it died, SIGKILL included — and the worker
# must end its whole process group, the processes its route started too.
#
# Perl may be built without threads, and a handler stuck in one long regular
# expression runs no other Perl code anyway, so the watcher is a process of
# its own, forked before the route is loaded. It holds nothing but the
# lifeline and a pipe from the worker, whose end of file (the worker has
# exited) makes it leave too.
use strict;
use warnings;
use POSIX ();

use constant ENV_NAME => 'BABELSIP_LIFELINE_FD';

my $alive_w;   # the worker's end of the worker -> watcher pipe, kept for its lifetime

# watch(): fork the watcher; true if there is a lifeline to watch. Takes the
# variable out of %ENV, so programs the route starts (which do not inherit
# the fd: Perl sets close-on-exec on it below) do not look for it.
sub watch {
    my $fd = delete $ENV{+ENV_NAME};
    return 0 unless defined $fd && $fd =~ /\A[0-9]+\z/;
    open(my $lifeline, '<&=', $fd) or return 0;
    return 0 unless -p $lifeline;
    my $worker = $$;
    pipe(my $alive_r, my $w) or return 0;   # fds above $^F: close-on-exec
    my $pid = fork();
    if (!defined $pid) {
        print STDERR "BabelSIP: no lifeline watcher ($!); this worker may outlive the host\n";
        return 0;
    }
    if ($pid) {
        close $alive_r;
        close $lifeline;   # the watcher has it
        $alive_w = $w;
        return 1;
    }
    # The watcher. POSIX::_exit on every way out: no END blocks, no
    # destructors, no buffered output of the worker written twice.
    local $SIG{INT} = 'IGNORE';
    close $w;
    my %keep = ($fd => 1, fileno($alive_r) => 1);
    my $top = POSIX::sysconf(POSIX::_SC_OPEN_MAX()) // 1024;
    # Hold no end of the protocol pipes: the host must see the worker's
    # stdout close when it exits.
    $keep{$_} or POSIX::close($_) for 0 .. $top - 1;
    my $rin = '';
    vec($rin, $fd, 1) = 1;
    vec($rin, fileno($alive_r), 1) = 1;
    while (1) {
        my $n = select(my $rout = $rin, undef, undef, undef);
        next if $n < 0 && $!{EINTR};
        last if $n < 0;
        # Nobody writes to either pipe: readable means end of file.
        last if vec($rout, fileno($alive_r), 1);   # the worker has exited
        if (vec($rout, $fd, 1)) {
            my $got = sysread($lifeline, my $byte, 1);
            next if $got;   # a host that writes to it: not end of file
            kill_group_or($worker) if getppid() == $worker;
            last;
        }
    }
    POSIX::_exit(0);
}

# The host is gone: SIGKILL our process group when $worker leads it (as the
# host starts workers; the watcher is in it too), else $worker alone — run by
# hand, the group is someone else's.
sub kill_group_or {
    my ($worker) = @_;
    if (getpgrp() == $worker) {
        kill 'KILL', -$worker;
    } else {
        kill 'KILL', $worker;
    }
    return;
}

1;
